"""Targets: small values that pick the scalar y^c to explain from a model's output.

A target is any callable ``output -> Tensor`` of shape (N,), one scalar per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def _logits(output: Any) -> Tensor:
    """The logits of an output: a tensor, the first item of a tuple, or ``.logits``."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def _per_sample(index: int | Sequence[int], logits: Tensor) -> Tensor:
    indices = torch.as_tensor(index, device=logits.device).reshape(-1)
    if indices.numel() == 1:
        indices = indices.expand(logits.shape[0])
    if indices.numel() != logits.shape[0]:
        raise ValueError(f"{indices.numel()} class indices given for a batch of {logits.shape[0]}")
    return logits.gather(1, indices[:, None]).squeeze(1)


@dataclass(frozen=True)
class ClassTarget:
    """The pre-softmax logit of class ``index`` (one index for all samples, or one per sample)."""

    index: int | Sequence[int]

    def __call__(self, output: Any) -> Tensor:
        return _per_sample(self.index, _logits(output))


@dataclass(frozen=True)
class ContrastTarget:
    """Why ``index`` and not ``other``: logit(index) - logit(other)."""

    index: int | Sequence[int]
    other: int | Sequence[int]

    def __call__(self, output: Any) -> Tensor:
        logits = _logits(output)
        return _per_sample(self.index, logits) - _per_sample(self.other, logits)


@dataclass(frozen=True)
class TopClassTarget:
    """The logit of each sample's ``rank``-th most likely class (0: the prediction), chosen from
    the same forward pass that is explained."""

    rank: int = 0

    def __call__(self, output: Any) -> Tensor:
        logits = _logits(output)
        chosen = logits.detach().topk(self.rank + 1, dim=1).indices[:, self.rank]
        return logits.gather(1, chosen[:, None]).squeeze(1)
