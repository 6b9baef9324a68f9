"""The :class:`VQAScorer` of mmcam's shipped easy-VQA model (``mmcam/models/vqa.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from mmcam.models.easy_vqa_data import UNKNOWN_INDEX, pad_question_ids
from mmcam.models.vqa import EasyVQANet

from ..io import to_tensor
from ..text import tokenize
from .vqa import QuestionTokens

IMAGE_SIZE = (64, 64)


@dataclass
class EasyVQAScorer:
    """64x64 images; the image encoder's 16x16 grid is the hooked layer, the word embeddings
    give the question-word attributions."""

    model: EasyVQANet
    name: str = "easy-vqa"
    layer: str = "image_encoder"
    embedding_layer: str | None = "embedding"
    reshape: object | None = None

    @property
    def answers(self) -> Sequence[str]:
        return self.model.answers

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        return to_tensor(pixels, IMAGE_SIZE)

    def tokenize(self, question: str) -> QuestionTokens:
        words = tokenize(question)
        ids = self.model.encode_question(words)
        unknown = tuple(word for word, index in zip(words, ids, strict=True) if index == UNKNOWN_INDEX)
        return QuestionTokens(tuple(words), tuple(ids), unknown)

    def collate(self, questions: Sequence[QuestionTokens]) -> Tensor:
        return pad_question_ids([question.ids for question in questions])

    def score(self, images: Tensor, question_ids: Tensor) -> Tensor:
        return self.model(images, question_ids)
