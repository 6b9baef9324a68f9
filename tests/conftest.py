"""Shared tiny models and helpers for the tests."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    """Convolutions with an in-place ReLU module, a ReLU module and a functional ReLU, pooling,
    a linear head."""

    def __init__(self, classes: int = 4, functional_relu: bool = True) -> None:
        super().__init__()
        self.functional_relu = functional_relu
        self.relu3 = nn.ReLU()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.mix = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, classes)
        for parameter in self.parameters():  # large enough that maps are far from zero
            nn.init.normal_(parameter, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        mixed = self.mix(features)
        rectified = torch.nn.functional.relu(mixed) if self.functional_relu else self.relu3(mixed)
        pooled = rectified.mean(dim=(-2, -1))
        return self.head(pooled)


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 3, 16, 16)


def model_state(model: nn.Module) -> dict:
    """Everything explaining must leave as it was."""
    return {
        "training": {name: module.training for name, module in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "hooks": {
            name: (
                len(module._forward_hooks),
                len(module._forward_pre_hooks),
                len(module._backward_hooks),
                len(getattr(module, "_backward_pre_hooks", {})),
            )
            for name, module in model.named_modules()
        },
        "modules": [(name, type(module).__name__, id(module)) for name, module in model.named_modules()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    assert before["modules"] == after["modules"]
    for name, grad in before["grad"].items():
        if grad is None:
            assert after["grad"][name] is None, name
        else:
            assert torch.equal(grad, after["grad"][name]), name
    for name, value in before["params"].items():
        assert torch.equal(value, after["params"][name]), name


@pytest.fixture
def snapshot():
    return model_state


__all__ = ["TinyCNN", "assert_same_state", "copy", "model_state"]
