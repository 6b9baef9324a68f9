"""The scorers of PaliGemma and Gemma 3 (see :mod:`~mmcam.adapters.hf.paligemma`): LLaVA's, with
the prompt's ``token_type_ids`` on every forward and ``generate`` call, answers cut at any end
token, and, for Gemma 3's pan-and-scan crops (:mod:`~mmcam.adapters.hf.gemma3_crops`), prompts
and pixel inputs that follow each image's crops."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ...core.hooks import eval_mode
from ...errors import InputError
from ...targets import CaptionScores
from ..captioning import CaptionTokens
from ..vqa import QuestionTokens
from .gemma3_crops import CropViews
from .llava import LlavaAnswerScorer, LlavaCaptioner
from .vqa import Candidate, pad_ids


@dataclass
class GemmaCaptioner(LlavaCaptioner):
    """A :class:`LlavaCaptioner` whose model also reads the prompt's ``token_type_ids``."""

    prompt: Any = None

    def text_inputs(self, ids: Tensor) -> dict[str, Tensor]:
        return {"token_type_ids": self.prompt.token_types(ids, [len(self.prefix)] * ids.shape[0])}


@dataclass
class GemmaAnswerScorer(LlavaAnswerScorer):
    """A :class:`LlavaAnswerScorer` whose language model also reads ``token_type_ids`` and whose
    image features are the projector's output on the vision tower's last hidden state. A
    generated answer ends at the first of ``end_ids`` (Gemma 3 stops at ``<eos>`` or
    ``<end_of_turn>``); y^c closes it with ``end_id``."""

    end_ids: tuple[int, ...] = ()

    def distinct_answers(self, sequences: list[list[int]], count: int) -> list[Candidate]:
        """LLaVA's distinct answers, each generated sequence first cut at its first end token of
        any kind (and closed with ``end_id``, where LLaVA cuts)."""
        cut = []
        for sequence in sequences:
            ends = [position for position, token in enumerate(sequence) if token in self.end_ids]
            cut.append([*sequence[: ends[0]], self.end_id] if ends else sequence)
        return super().distinct_answers(cut, count)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.model.get_image_features(pixel_values=images).pooler_output

    def text_inputs(self, ids: Tensor, prompt_lengths: Sequence[int]) -> dict[str, Tensor]:
        return {"token_type_ids": self.prompt.token_types(ids, prompt_lengths)}


@dataclass
class CropCaptioner(GemmaCaptioner):
    """Gemma 3 with pan-and-scan crops: the prompt holds one image-token block per view, so it
    depends on the image's crops (``prefix`` is empty; ``instruction`` is the user turn's text);
    the model reads the views that ``views`` cuts from the preprocessed image."""

    views: CropViews | None = field(default=None, repr=False)
    instruction: str = ""

    def preprocess(self, pixels: Any) -> Tensor:
        return self.views.crops.preprocess(pixels)

    def prompt_ids(self, images: Tensor) -> tuple[int, ...]:
        """The prompt for images (N, C, rows * s, cols * s) of one crop layout."""
        return self.prompt.crop_ids(self.instruction, self.views.count(images))

    def generate_batch(self, images: Tensor, beam_size: int) -> list[CaptionTokens]:
        """Captions of images of one crop layout: one ``generate`` call."""
        prefix = self.prompt_ids(images)
        prompt = torch.tensor(prefix, device=images.device).expand(images.shape[0], -1)
        with torch.no_grad(), eval_mode(self.model):
            sequences = self.model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=self.views.inputs(images),
                num_beams=beam_size, do_sample=False, max_new_tokens=self.max_new_tokens, **self.text_inputs(prompt),
            )
        if any(sequence[: len(prefix)].tolist() != list(prefix) for sequence in sequences):
            raise ValueError(f"{self.name} generated a sequence that does not begin with its prompt")
        return [self.caption_of(sequence[len(prefix) :].tolist()) for sequence in sequences]

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced logits (N, L, V) of captions ``ids`` (N, L) after the prompt."""
        if self.attention:
            raise ValueError("the language model's attention maps are not offered with pan-and-scan crops")
        prefix = self.prompt_ids(images)
        text = torch.cat([torch.tensor(prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1), ids], dim=1)
        self.views.rows([prefix] * ids.shape[0], range(ids.shape[0]), self.prompt.image_token_id)
        logits = self.model(pixel_values=self.views.inputs(images), input_ids=text, **self.text_inputs(text)).logits
        first = len(prefix) - 1
        return CaptionScores(logits[:, first : first + ids.shape[1]])


@dataclass
class CropAnswerScorer(GemmaAnswerScorer):
    """:class:`GemmaAnswerScorer` on pan-and-scan crops: question ids carry the prompt for an
    image without crops (the question's text kept by :meth:`tokenize`), rewritten for the
    images' crops before the model reads them."""

    views: CropViews | None = field(default=None, repr=False)
    _questions: _Recent = field(default_factory=lambda: _Recent(4096), repr=False)

    def preprocess(self, pixels: Any) -> Tensor:
        return self.views.crops.preprocess(pixels)

    def tokenize(self, question: str) -> QuestionTokens:
        tokens = super().tokenize(question)
        self._questions.put(tokens.ids, question)
        return tokens

    def prompt_ids(self, images: Tensor, question_ids: Tensor) -> Tensor:
        """Question ids (N, L) -> (N, L') with the image tokens of the images' crops."""
        crops = self.views.count(images)
        prompts = []
        for ids in self._unpadded(question_ids):
            question = self._questions.get(tuple(ids[0].tolist()))
            if question is None:
                raise InputError(f"{self.name}: question ids that this adapter's tokenize() did not give (or gave 4096 questions ago)")
            prompts.append(self.prompt.crop_ids(question, crops))
        return pad_ids(prompts, self.pad_id).to(question_ids.device)

    def generate_answers(self, images: Tensor, question_ids: Tensor, count: int) -> list[list[Candidate]]:
        return super().generate_answers(images, self.prompt_ids(images, question_ids), count)

    def item_pixels(self, images: Tensor, item: int) -> Tensor:
        return self.views.inputs(images[item : item + 1])

    def score(self, images: Tensor, question_ids: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        expanded = self.prompt_ids(images, question_ids)
        prompts = [prompt[0].tolist() for prompt in self._unpadded(expanded)]
        owners = [n for n, items in enumerate(candidates) for _ in items]  # the rows LlavaAnswerScorer.score reads
        self.views.rows(prompts, owners, self.prompt.image_token_id)
        return super().score(images, expanded, candidates)

    def image_features(self, images: Tensor) -> Tensor:
        """(N, F * image tokens, C): each image's views' projected tokens, thumbnail first."""
        features = super().image_features(self.views.inputs(images))
        return features.reshape(images.shape[0], -1, features.shape[-1])


class _Recent:
    """The ``size`` most recently put entries of a map, safe across threads."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, key: Any) -> Any:
        with self._lock:
            return self._items.get(key)
