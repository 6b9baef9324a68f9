"""Hooks held in context managers, and the guarantee that explaining leaves a model unchanged."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
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
    """What a capture hook saw in its own thread: the layer's output and how often it ran."""

    activation: Tensor | None = None
    calls: int = field(default=0)


@contextmanager
def capture_output(module: nn.Module, *, on_capture: Callable[[], None] | None = None) -> Iterator[Capture]:
    """Record ``module``'s output (its first element for tuple outputs) during the block.

    Only forward passes run by the thread that entered the block are recorded, so a forward of
    the same model in another thread is never mistaken for this one. The recorded tensor always
    requires grad (a frozen or ``no_grad`` encoder gets a fresh leaf), and the model continues
    with a clone of it, so in-place operations after the layer cannot alter the activations that
    gradients are taken with respect to. ``on_capture`` runs right after the capture (e.g. to
    start recording the graph). The hook is removed on every path.
    """
    captured = Capture()
    owner = threading.get_ident()

    def hook(_module: nn.Module, _args: tuple, output):
        if threading.get_ident() != owner:
            return None
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"the hooked layer returned {type(tensor).__name__}, not a tensor; hook a layer "
                "whose output (or first output) is a tensor"
            )
        captured.calls += 1
        if on_capture is not None:
            on_capture()
        with torch.enable_grad():
            if not tensor.requires_grad:
                tensor = tensor.detach().requires_grad_(True)
            passthrough = tensor.clone()
        captured.activation = tensor
        if isinstance(output, tuple):
            return (passthrough, *output[1:])
        if isinstance(output, list):
            return [passthrough, *output[1:]]
        return passthrough

    # before hooks that record outputs (transformers 5 records hidden states with forward hooks,
    # and LLaVA reads its vision_feature_layer from them): they must record the passthrough
    handle = module.register_forward_hook(hook, prepend=_records_outputs(module))
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run the block holding ``model``'s lock (every forward pass mmcam runs goes through here or
    through :class:`~mmcam.GradCAM`, so threads sharing a model take turns) with every module in
    eval mode; each module's own ``training`` flag is restored afterwards, on every path."""
    with model_lock(model):
        if not enabled:
            yield
            return
        flags = {module: module.training for module in model.modules()}
        if not any(flags.values()):  # already in eval mode (the usual case): nothing to switch
            yield
            return
        model.eval()
        try:
            yield
        finally:
            for module, training in flags.items():
                if module.training != training:
                    module.training = training


def _records_outputs(module: nn.Module) -> bool:
    """Whether transformers has hooked ``module`` to record its outputs (hidden states)."""
    return any(getattr(hook, "__module__", "").startswith("transformers.") for hook in module._forward_hooks.values())
