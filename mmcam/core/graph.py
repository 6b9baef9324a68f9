"""Keeping the autograd graph from the hooked layer to the score, whatever the forward does.

A model may run its frozen backbone under ``torch.no_grad()`` inside ``forward``, or an engine may
run the layers before the hooked one without autograd to save work. Once the hooked layer has run,
:class:`RecordGraph` records autograd for every later operation, so the score keeps its path to
the layer's (captured, grad-requiring) output. What it cannot undo, it remembers: calls that cut
the graph (``detach``, ``.data``, ``.numpy()``, ``.item()``) on tensors that required grad, so
that a missing gradient is reported with its cause instead of as an all-zero map.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

_DATA_DESCRIPTOR = torch._C.TensorBase.__dict__.get("data")
_GRAPH_BREAKERS = {
    Tensor.detach: "detach()",
    Tensor.detach_: "detach_()",
    torch.detach: "torch.detach()",
    Tensor.numpy: ".numpy()",
    Tensor.item: ".item()",
    Tensor.tolist: ".tolist()",
}


class RecordGraph(TorchFunctionMode):
    """While active, every torch operation records autograd (``torch.no_grad()`` inside the
    forward no longer cuts the graph); graph-cutting calls on grad-requiring tensors are
    counted in ``breaks``. ``active`` starts False for a pass that records only from the hooked
    layer on (the capture hook calls :meth:`activate`), True for one that needs the whole graph."""

    def __init__(self, active: bool) -> None:
        super().__init__()
        self.active = active
        self.breaks: dict[str, int] = {}

    def activate(self) -> None:
        """Record from here on; also switch autograd on for what follows the forward (the
        targets, custom autograd functions, which this mode does not see); the caller's own
        grad mode is restored by the ``torch.no_grad()`` block it runs in."""
        self.active = True
        torch.set_grad_enabled(True)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.active or func is torch._C._set_grad_enabled:
            return func(*args, **kwargs)
        if args and isinstance(args[0], Tensor) and args[0].requires_grad:
            name = _GRAPH_BREAKERS.get(func) or (".data" if _is_data_getter(func) else None)
            if name is not None:
                self.breaks[name] = self.breaks.get(name, 0) + 1
        if torch.is_grad_enabled():
            return func(*args, **kwargs)
        with torch.enable_grad():
            return func(*args, **kwargs)

    def cause(self, layer_name: str) -> str:
        """Why no gradient reaches ``layer_name``, in words, for an error message."""
        if self.breaks:
            calls = ", ".join(f"{name} x{count}" for name, count in self.breaks.items())
            return (
                f"the forward pass cuts the autograd graph after layer {layer_name!r} ({calls}), so "
                "the score has no gradient there; remove the detach, or hook a layer after it"
            )
        return (
            f"the score does not depend on layer {layer_name!r} through autograd (it is computed "
            "without it, or under torch.inference_mode()); hook a layer on the path from the image "
            "to the score"
        )


def _is_data_getter(func) -> bool:
    return _DATA_DESCRIPTOR is not None and getattr(func, "__self__", None) is _DATA_DESCRIPTOR
