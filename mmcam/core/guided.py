"""Guided Backpropagation (Springenberg et al. 2015) on ReLU and smooth-activation models,
without touching the model.

While :func:`guided_backprop` is active, every elementwise activation call runs through a gate
whose forward value is the activation's own (in-place calls still write into their input) and
whose backward can be switched between the ordinary derivative and the guided rule:

    grad_in = max(f'(x), 0) * max(grad_out, 0)

For ReLU (f' = 1[x > 0]) this is exactly the paper's rule: gradient passes only where the input
AND the incoming gradient are positive; for ReLU6 and hardtanh, where the input is inside the
linear range. For the smooth gates of today's vision encoders (GELU, SiLU/Swish, Mish,
Hardswish, ELU, CELU, SELU, LeakyReLU, Softplus, QuickGELU, ...) the same rule keeps only
positive incoming gradients and the non-negative part of the local slope, so it reduces to the
ReLU rule where the gate is ReLU-like and never lets a negative slope flip a gradient's sign.

Covered: the functional calls (``F.relu``, ``torch.relu``, ``Tensor.relu_``, ``F.gelu``,
``F.silu``, ...) that ``torch.nn``'s activation modules use, and activation modules from other
libraries that compose their own formula (transformers' ``QuickGELUActivation``,
``NewGELUActivation``; timm's ``QuickGELU``, ``Swish``, ...), recognised by class name. Every
gate that ran is counted by kind, so callers can report which rule was applied where; a model
with no recognised activation raises instead of returning a plain gradient as "guided".
The switch lets Grad-CAM's gradients and Guided Backprop's image gradients come from the same
forward pass.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

GUIDED_RULE = "max(f'(x), 0) * max(grad_out, 0)"


@dataclass
class GuidedSwitch:
    """Whether gates created under one :func:`guided_backprop` apply the guided rule right now,
    and how many activation calls of each kind went through a gate."""

    guided: bool = False
    applied: Counter = field(default_factory=Counter)
    inside_module: int = 0


class _GuidedGate(torch.autograd.Function):
    """Value ``y`` (the activation's own output), gradient to ``x`` through the slope ``d``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, y: Tensor, slope: Tensor, switch: GuidedSwitch) -> Tensor:
        return y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, _, slope, switch = inputs
        ctx.save_for_backward(slope)
        ctx.switch = switch

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (slope,) = ctx.saved_tensors
        if ctx.switch.guided:
            return grad_output.clamp(min=0) * slope.clamp(min=0), None, None, None
        return grad_output * slope, None, None, None


# functional activation -> (kind, the same function without in-place writes)
_FUNCTIONS: dict[Callable, tuple[str, Callable]] = {
    F.relu: ("relu", F.relu),
    torch.relu: ("relu", torch.relu),
    torch.relu_: ("relu", torch.relu),
    Tensor.relu: ("relu", torch.relu),
    Tensor.relu_: ("relu", torch.relu),
    F.relu6: ("relu6", F.relu6),
    F.hardtanh: ("hardtanh", F.hardtanh),
    F.hardtanh_: ("hardtanh", F.hardtanh),
    F.gelu: ("gelu", F.gelu),
    F.silu: ("silu", F.silu),
    F.mish: ("mish", F.mish),
    F.hardswish: ("hardswish", F.hardswish),
    F.elu: ("elu", F.elu),
    F.elu_: ("elu", F.elu),
    F.celu: ("celu", F.celu),
    F.selu: ("selu", F.selu),
    F.leaky_relu: ("leaky_relu", F.leaky_relu),
    F.leaky_relu_: ("leaky_relu", F.leaky_relu),
    F.softplus: ("softplus", F.softplus),
}
_IN_PLACE = {torch.relu_, Tensor.relu_, F.hardtanh_, F.elu_, F.leaky_relu_}
for _kind in ("relu", "celu", "selu"):  # F.relu_ and friends: not exported by every torch release
    _function = getattr(F, f"{_kind}_", None)
    if _function is not None:
        _FUNCTIONS[_function] = (_kind, getattr(F, _kind))
        _IN_PLACE.add(_function)

# Activation modules from other libraries that compute their own formula (not one F.* call).
_ACTIVATION_NAME = re.compile(r"(gelu|silu|swish|mish|relu|elu|softplus|quickgelu)(activation)?\d*$", re.IGNORECASE)


def is_composite_activation(module: nn.Module) -> bool:
    """An elementwise activation module outside ``torch.nn`` (by class name, no children)."""
    kind = type(module)
    return (
        not kind.__module__.startswith("torch.nn")
        and bool(_ACTIVATION_NAME.search(kind.__name__))
        and next(module.children(), None) is None
    )


def _slope(function: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """f'(x) of an elementwise ``function``, by autograd on a detached copy."""
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        value = function(leaf * 1.0)
        (slope,) = torch.autograd.grad(value, leaf, torch.ones_like(value))
    return slope


class _GuidedMode(TorchFunctionMode):
    def __init__(self, switch: GuidedSwitch) -> None:
        super().__init__()
        self.switch = switch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        known = _FUNCTIONS.get(func)
        if known is None or self.switch.inside_module or not args or not isinstance(args[0], Tensor):
            return func(*args, **kwargs)
        x, rest = args[0], args[1:]
        in_place = func in _IN_PLACE or bool(kwargs.get("inplace", False))
        if rest and isinstance(rest[-1], bool):  # a positional ``inplace`` flag
            in_place, rest = in_place or rest[-1], rest[:-1]
        if not (torch.is_grad_enabled() and x.requires_grad):
            return func(*args, **kwargs)
        kind, pure = known
        options = {key: value for key, value in kwargs.items() if key != "inplace"}
        function = lambda tensor: pure(tensor, *rest, **options)  # noqa: E731
        gated = _GuidedGate.apply(x, function(x).detach(), _slope(function, x), self.switch)
        self.switch.applied[kind] += 1
        if in_place:
            x.copy_(gated)  # the caller may rely on the write (``x.relu_()`` with the result unused)
            return x
        return gated


@contextmanager
def _module_gates(model: nn.Module, switch: GuidedSwitch) -> Iterator[None]:
    """Gates on composite activation modules; function gates are off inside them."""

    def before(module: nn.Module, args: tuple):
        switch.inside_module += 1
        if getattr(module, "inplace", False) and args and isinstance(args[0], Tensor):
            return (args[0].clone(), *args[1:])  # keep the input: the slope needs it
        return None

    def after(module: nn.Module, args: tuple, output):
        switch.inside_module -= 1
        if not (args and isinstance(args[0], Tensor) and isinstance(output, Tensor)):
            return None
        x = args[0]
        if not (torch.is_grad_enabled() and x.requires_grad):
            return None
        switch.inside_module += 1
        try:
            slope = _slope(module.forward, x)
        finally:
            switch.inside_module -= 1
        switch.applied[type(module).__name__] += 1
        return _GuidedGate.apply(x, output.detach(), slope, switch)

    with ExitStack() as stack:
        for module in model.modules():
            if is_composite_activation(module):
                for handle in (module.register_forward_pre_hook(before), module.register_forward_hook(after)):
                    stack.callback(handle.remove)
        yield


@contextmanager
def guided_backprop(model: nn.Module | None = None) -> Iterator[GuidedSwitch]:
    """Route the activations of forward passes in the block through switchable guided gates
    (see the module docstring). ``model`` enables the module gates for its composite
    activation modules. Forward values are unchanged."""
    switch = GuidedSwitch()
    with ExitStack() as stack:
        if model is not None:
            stack.enter_context(_module_gates(model, switch))
        stack.enter_context(_GuidedMode(switch))
        yield switch


def describe(applied: Counter) -> str:
    """``"relu x3, gelu x12"``: which activation calls the guided rule was applied to."""
    return ", ".join(f"{kind} x{count}" for kind, count in sorted(applied.items()))
