"""Property-based tests (issue #7): over random tiny models, inputs, targets, methods and options,
explaining leaves the model exactly as it was (also when a target fails midway), and the maps are
finite, in [0, 1] when normalised, and of the right shape.

Random models: 1-4 conv blocks of random width and stride, each with a ReLU module, an in-place
ReLU module or a functional ``F.relu``, optional BatchNorm and Dropout; in train or eval mode;
some parameters frozen, some with a ``.grad`` already set (a user mid-training).
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mmcam import ClassTarget, ContrastTarget, GradCAM
from mmcam.core.hooks import _MODEL_LOCKS
from mmcam.core.methods import METHODS
from mmcam.targets import TopClassTarget
from reliability_support import assert_lock_free, assert_unchanged, full_state, one_torch_thread  # noqa: F401

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


class FunctionalReLU(nn.Module):
    """ReLU as a function call inside ``forward``: guided backprop must catch it without a module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class Tripwire(nn.Module):
    """Identity, or raises when armed: a model that fails in the middle of its forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise Boom("boom in the forward pass")
        return x


class RandomNet(nn.Module):
    def __init__(self, blocks: list[dict], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for block in blocks:
            layers.append(nn.Conv2d(channels, block["width"], 3, stride=block["stride"], padding=1))
            if block["batch_norm"]:
                layers.append(nn.BatchNorm2d(block["width"]))
            layers.append({"relu": nn.ReLU(), "inplace": nn.ReLU(inplace=True), "functional": FunctionalReLU()}[block["activation"]])
            if block["dropout"]:
                layers.append(nn.Dropout(0.5))
            channels = block["width"]
        self.features = nn.Sequential(*layers)
        self.tripwire = Tripwire()
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tripwire(self.features(x)).mean(dim=(-2, -1)))


class Boom(Exception):
    """The failure a test provokes, told apart from any real error."""


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise Boom("boom in the backward pass")


class RaisingTarget:
    """A target that fails when called, or whose score fails during the backward pass."""

    def __init__(self, when: str) -> None:
        self.when = when

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.when == "call":
            raise Boom("boom in a target")
        return _RaiseInBackward.apply(output[:, 0])


@st.composite
def models(draw) -> RandomNet:
    torch.manual_seed(draw(st.integers(0, 2**16)))
    blocks = [
        {
            "width": draw(st.integers(1, 6)),
            "stride": draw(st.sampled_from([1, 2])),
            "activation": draw(st.sampled_from(["relu", "inplace", "functional"])),
            "batch_norm": draw(st.booleans()),
            "dropout": draw(st.booleans()),
        }
        for _ in range(draw(st.integers(1, 4)))
    ]
    model = RandomNet(blocks, classes=draw(st.integers(2, 5)))
    for module in model.modules():  # random running statistics, so eval-mode BatchNorm is not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    model.train(draw(st.booleans()))
    for parameter in model.parameters():
        if draw(st.booleans()):
            parameter.grad = torch.randn_like(parameter)
        parameter.requires_grad_(draw(st.integers(0, 3)) > 0)  # about a quarter frozen
    return model


@st.composite
def targets(draw, classes: int) -> list:
    def one():
        kind = draw(st.sampled_from(["class", "contrast", "top"]))
        if kind == "class":
            return ClassTarget(draw(st.integers(0, classes - 1)))
        if kind == "contrast":
            return ContrastTarget(draw(st.integers(0, classes - 1)), draw(st.integers(0, classes - 1)))
        return TopClassTarget(draw(st.integers(0, classes - 1)))

    return [one() for _ in range(draw(st.integers(1, 4)))]


def layer_names(model: RandomNet) -> list[str | None]:
    """Any block of the conv stack, or None for the default (the last conv stage)."""
    return [None, *(f"features.{index}" for index in range(len(model.features)))]


@SETTINGS
@given(data=st.data(), model=models())
def test_any_explanation_leaves_the_model_unchanged_and_maps_sound(data, model) -> None:
    classes = model.head.out_features
    count = data.draw(st.integers(1, 3), label="batch")
    height, width = data.draw(st.integers(4, 20), label="height"), data.draw(st.integers(4, 20), label="width")
    images = torch.rand(count, 3, height, width)
    original_images = images.clone()
    chosen = data.draw(targets(classes), label="targets")
    layer = data.draw(st.sampled_from(layer_names(model)), label="layer")
    method = data.draw(st.sampled_from(list(METHODS)), label="method")
    guided, counterfactual, upsample, normalize, no_grad = (data.draw(st.booleans(), label=label) for label in ("guided", "counterfactual", "upsample", "normalize", "no_grad"))
    before = full_state(model)
    with torch.no_grad() if no_grad else torch.enable_grad():
        inside = full_state(model)
        with GradCAM(model, layer, method=method) as cam:
            record = cam.gradients(images, chosen, guided=guided)
            maps = cam.maps(record, counterfactual=counterfactual, upsample=upsample, normalize=normalize)
        assert_unchanged(inside, full_state(model))
    assert_unchanged(before, full_state(model))
    assert torch.equal(images, original_images) and images.grad is None and not images.requires_grad
    assert_lock_free(model)

    grid = tuple(record.activations.shape[-2:])
    assert maps.shape == (count, len(chosen), *((height, width) if upsample else grid))
    assert torch.isfinite(maps).all() and maps.min() >= 0
    if normalize:
        assert maps.max() <= 1
        peaks = maps.amax(dim=(-2, -1))
        assert torch.all((peaks == 0) | torch.isclose(peaks, torch.ones_like(peaks)))
    assert record.scores.shape == (count, len(chosen)) and torch.isfinite(record.scores).all()
    if guided:
        assert record.input_gradients.shape == (count, len(chosen), 3, height, width)
        assert torch.isfinite(record.input_gradients).all()
    else:
        assert record.input_gradients is None


@SETTINGS
@given(data=st.data(), model=models())
def test_a_failure_midway_leaves_nothing_behind(data, model) -> None:
    classes = model.head.out_features
    images = torch.rand(data.draw(st.integers(1, 3), label="batch"), 3, 12, 12)
    layer = data.draw(st.sampled_from(layer_names(model)), label="layer")
    guided = data.draw(st.booleans(), label="guided")
    chosen = data.draw(targets(classes), label="targets")
    where = data.draw(st.sampled_from(["call", "backward", "forward"]), label="where")
    failing = list(chosen)
    if where != "forward":  # the failing target sits among good ones
        failing.insert(data.draw(st.integers(0, len(chosen)), label="position"), RaisingTarget(where))
    with GradCAM(model, layer) as cam:
        expected = cam.gradients(images, chosen, guided=guided)
        before = full_state(model)
        model.tripwire.armed = where == "forward"
        with pytest.raises(Boom, match="boom"):
            cam.gradients(images, failing, guided=guided)
        model.tripwire.armed = False
        assert_unchanged(before, full_state(model))
        assert_lock_free(model)
        again = cam.gradients(images, chosen, guided=guided)  # nothing stale from the failed call
    torch.testing.assert_close(again.gradients, expected.gradients, rtol=0, atol=0)
    torch.testing.assert_close(again.activations, expected.activations, rtol=0, atol=0)
    if guided:
        torch.testing.assert_close(again.input_gradients, expected.input_gradients, rtol=0, atol=0)


def test_lock_registry_forgets_models_that_are_gone() -> None:
    """The lock registry is keyed weakly: a model explained once and dropped leaves no entry."""
    torch.manual_seed(0)
    model = RandomNet([{"width": 4, "stride": 1, "activation": "relu", "batch_norm": True, "dropout": False}], 3).eval()
    with GradCAM(model) as cam:
        cam(torch.rand(1, 3, 8, 8), [ClassTarget(0)])
    assert model in _MODEL_LOCKS
    entries = len(_MODEL_LOCKS)
    gone = weakref.ref(model)
    del model, cam
    gc.collect()
    assert gone() is None and len(_MODEL_LOCKS) <= entries - 1
