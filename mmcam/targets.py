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


@dataclass
class CaptionScores:
    """Teacher-forced scores of a caption, aligned with its tokens.

    logits: (N, L, V), row t scores token t of the caption given the image and tokens < t;
    attention: (N, L, h, w), the model's own attention at each step, or None.
    """

    logits: Tensor
    attention: Tensor | None = None
    _logprobs: Tensor | None = None

    @property
    def logprobs(self) -> Tensor:
        """log_softmax of the logits, computed once for all targets."""
        if self._logprobs is None:
            self._logprobs = torch.log_softmax(self.logits, dim=-1)
        return self._logprobs


def _token_scores(table: Tensor, positions: Sequence[int], token_ids: Sequence[int]) -> Tensor:
    """Sum over a word's pieces of table[:, position, token_id] -> (N,)."""
    rows = torch.as_tensor(list(positions), device=table.device)
    columns = torch.as_tensor(list(token_ids), device=table.device)
    return table[:, rows, columns].sum(dim=1)


@dataclass(frozen=True)
class WordTarget:
    """y = log p(w_t | w_<t, image) of one caption word, by teacher forcing; a word made of
    several tokens sums its pieces' log-probs (all positions of a caption: the whole caption's
    log-prob). ``score="logit"`` takes the pre-softmax logits instead."""

    positions: tuple[int, ...]
    token_ids: tuple[int, ...]
    score: str = "logprob"

    def __call__(self, output: CaptionScores) -> Tensor:
        table = output.logits if self.score == "logit" else output.logprobs
        return _token_scores(table, self.positions, self.token_ids)


@dataclass(frozen=True)
class WordContrastTarget:
    """Why this word and not another: log p(w) - log p(w') at the word's first token.

    ``other_id=None`` contrasts with the model's most likely other token at that step, chosen
    from the same forward pass."""

    position: int
    token_id: int
    other_id: int | None = None

    def __call__(self, output: CaptionScores) -> Tensor:
        step = output.logprobs[:, self.position]
        other = self.other_id
        if other is None:
            ranked = step.detach().topk(2, dim=1).indices
            alternatives = torch.where(ranked[:, 0] == self.token_id, ranked[:, 1], ranked[:, 0])
            return step[:, self.token_id] - step.gather(1, alternatives[:, None]).squeeze(1)
        return step[:, self.token_id] - step[:, other]



def _item_rows(pieces: Sequence[tuple[int, int, int]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(sample, position, token id) triples -> three index tensors."""
    table = torch.as_tensor(list(pieces), dtype=torch.long, device=device).reshape(-1, 3)
    return table[:, 0], table[:, 1], table[:, 2]


@dataclass(frozen=True)
class ItemWordTarget:
    """One caption word per sample of a minibatch of different captions: ``words[n]`` is
    sample n's word as (positions, token ids), or None where sample n has no word in this slot
    (its score is 0, so its maps are 0). Each sample's scalar reads only its own row of the
    output, so no target mixes items; a word made of several tokens sums its pieces, as
    :class:`WordTarget` does."""

    words: tuple[tuple[tuple[int, ...], tuple[int, ...]] | None, ...]
    score: str = "logprob"

    @property
    def scored(self) -> tuple[bool, ...]:
        """Per sample, whether it has a word here."""
        return tuple(word is not None for word in self.words)

    def __call__(self, output: CaptionScores) -> Tensor:
        table = output.logits if self.score == "logit" else output.logprobs
        if len(self.words) != table.shape[0]:
            raise ValueError(f"{len(self.words)} words given for a batch of {table.shape[0]}")
        pieces = [
            (n, position, token)
            for n, word in enumerate(self.words)
            if word is not None
            for position, token in zip(*word, strict=True)
        ]
        samples, positions, tokens = _item_rows(pieces, table.device)
        return table.new_zeros(table.shape[0]).index_add(0, samples, table[samples, positions, tokens])


@dataclass(frozen=True)
class ItemWordContrastTarget:
    """Per sample, :class:`WordContrastTarget` against the runner-up token: ``words[n]`` is
    (position, token id) of sample n's word, or None (score 0)."""

    words: tuple[tuple[int, int] | None, ...]

    @property
    def scored(self) -> tuple[bool, ...]:
        """Per sample, whether it has a word here."""
        return tuple(word is not None for word in self.words)

    def __call__(self, output: CaptionScores) -> Tensor:
        logprobs = output.logprobs
        if len(self.words) != logprobs.shape[0]:
            raise ValueError(f"{len(self.words)} words given for a batch of {logprobs.shape[0]}")
        samples, positions, tokens = _item_rows(
            [(n, *word) for n, word in enumerate(self.words) if word is not None], logprobs.device
        )
        steps = logprobs[samples, positions]  # (M, V)
        ranked = steps.detach().topk(2, dim=1).indices
        alternatives = torch.where(ranked[:, 0] == tokens, ranked[:, 1], ranked[:, 0])
        values = steps.gather(1, tokens[:, None]).squeeze(1) - steps.gather(1, alternatives[:, None]).squeeze(1)
        return logprobs.new_zeros(logprobs.shape[0]).index_add(0, samples, values)



@dataclass(frozen=True)
class SummedTarget:
    """The sum of targets that each score a different set of samples (0 for the others): one
    column of a minibatch in which sample n's target is a word and sample m's a contrast."""

    parts: tuple[Any, ...]

    @property
    def scored(self) -> tuple[bool, ...]:
        """Per sample, whether one of the parts scores it."""
        return tuple(any(cells) for cells in zip(*(part.scored for part in self.parts), strict=True))

    def __call__(self, output: Any) -> Tensor:
        return torch.stack([part(output) for part in self.parts]).sum(dim=0)



@dataclass(frozen=True)
class ChosenClassTarget:
    """Per sample, the logit of a given class, or (``None``) of the sample's predicted class
    (its ``rank``-th best when the given class is None), from the same forward pass."""

    indices: tuple[int | None, ...]
    rank: int = 0

    def __call__(self, output: Any) -> Tensor:
        logits = _logits(output)
        if len(self.indices) != logits.shape[0]:
            raise ValueError(f"{len(self.indices)} class choices given for a batch of {logits.shape[0]}")
        predicted = logits.detach().topk(self.rank + 1, dim=1).indices[:, self.rank]
        given = torch.tensor([-1 if index is None else index for index in self.indices], device=logits.device)
        chosen = torch.where(given >= 0, given, predicted)
        return logits.gather(1, chosen[:, None]).squeeze(1)
