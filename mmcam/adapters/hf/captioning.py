"""Captioners from transformers: y_t = log p(word t | words < t, image), by teacher forcing.

One scorer serves BLIP, BLIP-2, GIT and VisionEncoderDecoderModel; the families differ only in
the tokens fed before the caption, the argument that carries the text, and whether the logits
begin with rows for image tokens that are not in the text (GIT). A word made of several subword tokens scores the sum of its
tokens' log-probs (:class:`~mmcam.targets.WordTarget` sums a word's span).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...core.hooks import eval_mode
from ...errors import InputError
from ...targets import CaptionScores
from ..captioning import CaptionTokens
from .preprocess import ImageSettings
from .words import encode_words, word_pieces


@dataclass
class TransformersCaptioner:
    """A :class:`~mmcam.adapters.captioning.CaptionScorer` for a transformers captioner.

    The model reads ``prefix + caption`` through ``text_argument`` (``input_ids``, or
    ``decoder_input_ids`` for encoder-decoders); the prefix is BLIP's bos, GIT's [CLS], BLIP-2's
    image placeholders and bos, or an encoder-decoder's decoder start token. Its logits may begin with rows for image tokens
    that are not in the text (GIT); their count is the logits' length minus the text's. After
    them, row ``len(prefix) - 1 + t`` scores caption token t. ``generate`` output begins with
    ``prefix`` and ends at the first of ``end_ids``; neither is part of the caption, so neither is
    explained. Special tokens inside a caption are scored (the model reads them) but belong to no
    word; every other token belongs to one (see :mod:`~mmcam.adapters.hf.words`).
    """

    name: str
    model: nn.Module
    tokenizer: Any
    image: ImageSettings
    layer: str
    reshape: object | None
    prefix: tuple[int, ...]
    end_ids: tuple[int, ...]
    text_argument: str = "input_ids"
    max_new_tokens: int = 30

    @property
    def pad_id(self) -> int:
        """The tokenizer's pad id (0 when it has none): it right-pads shorter captions of a
        minibatch, after every real token, so the causal text decoders of these families never
        read it for a real token's row (batched == one at a time, tested)."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        return self.image.tensor(pixels)

    def tokenize(self, caption: str) -> CaptionTokens:
        ids, pieces = encode_words(self.tokenizer, caption, special_tokens=False)
        if pieces.unknown:
            unknown = ", ".join(pieces.words[w] for w in pieces.unknown)
            raise InputError(f"words {self.name}'s tokenizer cannot read (unknown token): {unknown}")
        if not pieces.words:
            raise InputError(f"the caption {caption!r} has no words")
        return CaptionTokens(tuple(ids), pieces.words, pieces.spans)

    def generate(self, images: Tensor, beam_size: int) -> CaptionTokens:
        return self.generate_batch(images, beam_size)[0]

    def generate_batch(self, images: Tensor, beam_size: int) -> list[CaptionTokens]:
        """Captions of images (N, C, h, w) from one ``generate`` call (no text input, so no
        padding reaches the model; a finished caption's later tokens are cut at its end)."""
        with torch.no_grad(), eval_mode(self.model):
            sequences = self.model.generate(
                pixel_values=images, num_beams=beam_size, do_sample=False, max_new_tokens=self.max_new_tokens
            )
        return [self.caption_of(sequence.tolist()) for sequence in sequences]

    def caption_of(self, sequence: Sequence[int]) -> CaptionTokens:
        """The caption in a generated ``sequence``: after the prefix, before the first end token."""
        start = len(self.prefix)
        if tuple(sequence[:start]) != self.prefix:
            raise ValueError(
                f"{self.name} generated {list(sequence[:start])} where its prefix {list(self.prefix)} "
                "was expected; teacher forcing would not score the same caption"
            )
        ids = list(sequence[start:])
        ends = [position for position, token in enumerate(ids) if token in self.end_ids]
        ids = ids[: ends[0]] if ends else ids
        pieces = word_pieces(self.tokenizer, ids)
        return CaptionTokens(tuple(ids), pieces.words, pieces.spans)

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced logits (N, L, V) of captions ``ids`` (N, L): row t scores ids[:, t]."""
        prefix = torch.tensor(self.prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
        text = torch.cat([prefix, ids], dim=1)
        logits = self.model(pixel_values=images, **{self.text_argument: text}).logits
        first = logits.shape[1] - text.shape[1] + len(self.prefix) - 1
        return CaptionScores(logits[:, first : first + ids.shape[1]])
