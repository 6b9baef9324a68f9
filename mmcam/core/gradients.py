"""Gradients of many target scalars with respect to a few tensors, from one graph."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_CHUNK_SIZE = 32


def target_gradients(
    scores: Tensor,
    inputs: Sequence[Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    retain_graph: bool = False,
) -> list[Tensor | None]:
    """Gradients of every target column of ``scores`` (N, T) with respect to each of ``inputs``.

    Returns one tensor (N, T, *input.shape[1:]) per input, or None for an input that no score
    depends on through autograd (the caller decides whether that is an error). Samples are
    independent, so the gradient of column t summed over the batch gives every sample's own
    gradient. The T backward passes run batched (``is_grads_batched``) in chunks of
    ``chunk_size``; only ``inputs`` receive gradients, never the model's parameters.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (N, T), got {tuple(scores.shape)}")
    if not scores.requires_grad:
        return [None] * len(inputs)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    count = scores.shape[1]
    one_hot = torch.eye(count, dtype=scores.dtype, device=scores.device)
    cotangents = one_hot[:, None, :].expand(count, *scores.shape)
    return propagate(scores, inputs, cotangents, chunk_size=chunk_size, retain_graph=retain_graph)


def propagate(
    output: Tensor,
    inputs: Sequence[Tensor],
    cotangents: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    retain_graph: bool = False,
) -> list[Tensor | None]:
    """Vector-Jacobian products of ``output`` for T ``cotangents`` (T, *output.shape) at once:
    per input, (A0, T, A1, ...) for an input of shape (A0, A1, ...), or None when ``output``
    does not depend on it. Batched backward passes in chunks of ``chunk_size``."""
    count = cotangents.shape[0]
    chunks: list[list[Tensor | None]] = []
    for start in range(0, count, chunk_size):
        stop = min(start + chunk_size, count)
        chunks.append(_batched_grad(output, inputs, cotangents[start:stop], retain_graph or stop < count))
    return [
        None if any(chunk is None for chunk in per_input) else torch.cat(per_input, dim=0).transpose(0, 1)
        for per_input in zip(*chunks, strict=True)
    ]


def _batched_grad(
    scores: Tensor, inputs: Sequence[Tensor], grad_outputs: Tensor, retain_graph: bool
) -> list[Tensor | None]:
    """(k, *input.shape) gradients for k ``grad_outputs`` (k, *scores.shape)."""
    if grad_outputs.shape[0] == 1:
        grads = torch.autograd.grad(
            scores, inputs, grad_outputs[0], retain_graph=retain_graph, allow_unused=True
        )
        grads = tuple(None if grad is None else grad.unsqueeze(0) for grad in grads)
    else:
        try:
            grads = torch.autograd.grad(
                scores,
                inputs,
                grad_outputs,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        except RuntimeError:
            # An operator without a batching rule: the same gradients one target at a time.
            grads = _looped_grad(scores, inputs, grad_outputs)
    return list(grads)


def _looped_grad(scores: Tensor, inputs: Sequence[Tensor], grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
    per_target = [
        torch.autograd.grad(scores, inputs, one, retain_graph=True, allow_unused=True) for one in grad_outputs
    ]
    return tuple(
        None if grads[0] is None else torch.stack(grads)
        for grads in zip(*per_target, strict=True)
    )
