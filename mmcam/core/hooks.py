"""Hooks held in context managers, and the guarantee that explaining leaves a model unchanged."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

_MODEL_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """One lock per model: explanations of the same model run one at a time, so a hook never
    sees another thread's forward pass."""
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@dataclass
class Capture:
    """What a capture hook saw: the layer's output of the last forward pass."""

    activation: Tensor | None = None
    calls: int = field(default=0)


@contextmanager
def capture_output(module: nn.Module, *, enable_grad_after: bool = False) -> Iterator[Capture]:
    """Record ``module``'s output (its first element for tuple outputs) during the block.

    The recorded tensor always requires grad (a frozen encoder gets a fresh leaf), and the model
    continues with a clone of it, so in-place operations after the layer cannot alter the
    activations that gradients are taken with respect to. With ``enable_grad_after`` the hook
    switches autograd on for the rest of the forward pass: a forward started under
    ``torch.no_grad()`` then records a graph only from the layer to the output, which is all that
    gradients with respect to the layer need. The hook is removed on every path.
    """
    captured = Capture()

    def hook(_module: nn.Module, _args: tuple, output):
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"the hooked layer returned {type(tensor).__name__}, not a tensor; hook a layer "
                "whose output (or first output) is a tensor"
            )
        if enable_grad_after:
            torch.set_grad_enabled(True)
        if not tensor.requires_grad:
            tensor = tensor.detach().requires_grad_(True)
        captured.activation = tensor
        captured.calls += 1
        passthrough = tensor.clone()
        if isinstance(output, tuple):
            return (passthrough, *output[1:])
        if isinstance(output, list):
            return [passthrough, *output[1:]]
        return passthrough

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run the block with every module in eval mode; each module's own ``training`` flag is
    restored afterwards, on every path."""
    if not enabled:
        yield
        return
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in flags.items():
            module.training = training
