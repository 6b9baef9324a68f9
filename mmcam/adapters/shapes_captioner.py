"""The :class:`CaptionScorer` of mmcam's shipped scene captioner (``mmcam/models/captioner.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mmcam.models.captioner import SPECIAL_TOKENS, ShapesCaptioner

from ..errors import InputError
from ..io import to_tensor
from ..targets import CaptionScores
from ..text import tokenize
from .captioning import CaptionTokens


@dataclass
class ShapesCaptionerScorer:
    """Word-level vocabulary; the caption is fed after ``<start>`` and row t of the logits
    scores word t. The encoder (N, 128, 16, 16) is the hooked layer."""

    model: ShapesCaptioner
    name: str = "shapes-captioner"
    layer: str = "encoder"
    reshape: object | None = None

    @property
    def pad_id(self) -> int:
        """The id that right-pads shorter captions of a minibatch."""
        return self.model.pad_id

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        size = self.model.config.image_size
        return to_tensor(pixels, (size, size))

    def tokenize(self, caption: str) -> CaptionTokens:
        words = tokenize(caption)
        if not words:
            raise InputError(f"the caption {caption!r} has no words")
        known = set(self.model.vocab) - set(SPECIAL_TOKENS)
        unknown = [word for word in words if word not in known]
        if unknown:
            raise InputError(
                f"words not in the {self.name} vocabulary: {', '.join(unknown)}; "
                f"known words: {', '.join(sorted(known))}"
            )
        return CaptionTokens.one_token_per_word(words, self.model.encode_words(words))

    def generate(self, images: Tensor, beam_size: int) -> CaptionTokens:
        return self.generate_batch(images, beam_size)[0]

    def generate_batch(self, images: Tensor, beam_size: int) -> list[CaptionTokens]:
        """Captions of images (N, C, h, w); greedy decoding runs batched."""
        return [
            CaptionTokens.one_token_per_word(self.model.decode_ids(ids), ids)
            for ids, _ in self.model.generate(images, beam_size=beam_size)
        ]

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        start = torch.full((ids.shape[0], 1), self.model.start_id, dtype=torch.long, device=ids.device)
        logits, attention = self.model(images, torch.cat([start, ids], dim=1))
        length = ids.shape[1]
        return CaptionScores(logits[:, :length], attention[:, :length])
