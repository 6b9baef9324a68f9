"""Guided Backpropagation (Springenberg et al. 2015) without touching the model.

While :func:`guided_relus` is active, every ReLU-family call (``nn.ReLU`` and ``nn.ReLU6``
modules, in-place or not, and functional ``F.relu``, ``torch.relu``, ``Tensor.relu``,
``F.relu6``, ``F.hardtanh``) runs through a clamp whose backward can be switched between the
ordinary derivative and the guided rule: gradient passes only where the input is inside the
linear range AND the incoming gradient is positive. The switch lets Grad-CAM's gradients and
Guided Backprop's input gradients come from the same forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


@dataclass
class GuidedSwitch:
    """Whether clamps created under one :func:`guided_relus` apply the guided rule right now."""

    guided: bool = False


class _GuidedClamp(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, low: float | None, high: float | None, switch: GuidedSwitch) -> Tensor:
        return torch.clamp(x, min=low, max=high)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, low, high, switch = inputs
        inside = torch.ones_like(x, dtype=torch.bool)
        if low is not None:
            inside = inside & (x > low)
        if high is not None:
            inside = inside & (x < high)
        ctx.save_for_backward(inside)
        ctx.switch = switch

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (inside,) = ctx.saved_tensors
        passed = grad_output * inside
        if ctx.switch.guided:
            passed = passed.clamp(min=0)
        return passed, None, None, None


_RELU_CALLS = {F.relu, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}
_RELU6_CALLS = {F.relu6}
_HARDTANH_CALLS = {F.hardtanh, F.hardtanh_}
try:  # the in-place functional variant is not exported by every torch release
    _RELU_CALLS.add(F.relu_)
except AttributeError:  # pragma: no cover
    pass


class _GuidedMode(TorchFunctionMode):
    def __init__(self, switch: GuidedSwitch) -> None:
        super().__init__()
        self.switch = switch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_CALLS:
            return _GuidedClamp.apply(args[0], 0.0, None, self.switch)
        if func in _RELU6_CALLS:
            return _GuidedClamp.apply(args[0], 0.0, 6.0, self.switch)
        if func in _HARDTANH_CALLS:
            low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
            high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
            return _GuidedClamp.apply(args[0], float(low), float(high), self.switch)
        return func(*args, **kwargs)


@contextmanager
def guided_relus() -> Iterator[GuidedSwitch]:
    """Route ReLU-family calls in the block through switchable guided clamps.

    The forward values are unchanged. In-place variants return a new tensor instead of writing
    into their input (module code uses the return value, so results are the same).
    """
    switch = GuidedSwitch()
    with _GuidedMode(switch):
        yield switch
