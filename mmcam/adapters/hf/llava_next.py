"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``) and LLaVA-OneVision
(``LlavaOnevisionForConditionalGeneration``): captions and answers with anyres tiling.

As for LLaVA (:mod:`~mmcam.adapters.hf.llava`), prompts come from the checkpoint's own processor
and chat template, and a caption or answer is scored by teacher forcing after the prompt. What
differs is the image: the processor tiles each image by its size (the best of its
``image_grid_pinpoints``), so the number of image tokens depends on the image. Here:

- :meth:`~AnyresCaptioner.preprocess` keeps the image at its own size, normalised (3, H, W): its
  size is the ``image_sizes`` the model needs, and Guided Backprop's input gradients lie on the
  original image;
- the score builds ``pixel_values`` (base view, then the tiles) and ``image_sizes`` from it
  inside the forward pass with differentiable ops (:class:`~.llava_next_views.AnyresViews`),
  and the prompt ids with as many image placeholders as the processor gives an image of that
  size (the processor's own count, asked with a blank image of the size);
- the map (:class:`~.llava_next_views.TileLayout`) is the hooked layer's patch tokens of the
  high-resolution tiles, stitched and unpadded as the model does it: one grid over the whole
  original image. The base view's tokens and their gradients are discarded, so the map shows
  where in the tiles the score depends on the layer, not what it draws from the base view.

Layer choices (``--layer``):

- the vision tower block the language model reads, ``model.vision_tower.encoder.layers.K`` with
  K from ``vision_feature_layer`` (default; any other tower block works alike);
- the projector's output, ``model.multi_modal_projector``: the image tokens the language model
  reads, before unpadding and the newline tokens;
- language-model layer K's hidden states at the image placeholders,
  ``model.language_model.layers.K`` (K below the last), laid out on the grid the language model
  reads (:class:`~.llava_next_views.LanguageTokens`; base view and newline tokens dropped).

OneVision's ``anyres_max_K`` shrinks the unpadded grid bilinearly for the language model when
it holds more than about K tiles' worth of patches: the tower and projector maps are at the full
unpadded grid (they lie before the shrink), a language-model layer's at the shrunk one. Images
of different sizes are explained in separate passes (one prompt per size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...core import resolve_layer
from ...core.hooks import eval_mode
from ...errors import InputError
from ...targets import CaptionScores
from ..captioning import CaptionAdapter, CaptionTokens
from ..vqa import QuestionTokens
from .llava import (
    DEFAULT_INSTRUCTION, LANGUAGE_MODEL, PROJECTOR, TOWER, LlavaAnswerScorer, LlavaCaptioner, LlavaPrompt, tower_layer,
)
from .llava_next_views import AnyresViews, LanguageTokens, TileLayout
from .loading import Loaded, _end_ids, _first_id, processor_of
from .vqa import Candidate, GenerativeVQAAdapter, pad_ids


def default_layer(model: nn.Module) -> str:
    """The vision tower block whose output the language model reads."""
    return tower_layer(model)


@dataclass(frozen=True)
class AnyresPrompt:
    """Prompt ids whose one image placeholder is expanded to the processor's count for an
    image of a given size."""

    prompt: LlavaPrompt
    _counts: dict[tuple[int, int], int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def image_token_id(self) -> int:
        return self.prompt.image_token_id

    def template(self, text: str) -> tuple[int, ...]:
        """The processor's ids of the chat-template prompt around ``text``, its run of image
        placeholders collapsed back to one."""
        ids = self.prompt.ids(text)
        image = self.image_token_id
        collapsed = [token for position, token in enumerate(ids) if token != image or position == 0 or ids[position - 1] != image]
        if collapsed.count(image) != 1:
            images = collapsed.count(image)
            raise InputError(f"{self.prompt.name}'s chat template puts {images} images in a prompt; one is needed")
        return tuple(collapsed)

    def count(self, size: tuple[int, int]) -> int:
        """Image placeholders the processor gives an image of ``size`` (H, W)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._counts:
            sized = dataclasses.replace(self.prompt, image=dataclasses.replace(self.prompt.image, size=size))
            self._counts[size] = sized.ids(DEFAULT_INSTRUCTION).count(self.image_token_id)
        return self._counts[size]

    def expand(self, ids: Sequence[int], size: tuple[int, int]) -> list[int]:
        """Template ``ids`` with the image placeholder repeated for an image of ``size``."""
        image = self.image_token_id
        expanded: list[int] = []
        for token in ids:
            expanded.extend([image] * self.count(size) if token == image else [token])
        return expanded


@dataclass
class _Anyres:
    """What the captioner and the VQA scorer share: the views, the prompt and the layout."""

    views: AnyresViews | None = field(default=None, repr=False)
    prompts: AnyresPrompt | None = field(default=None, repr=False)
    layout: TileLayout | LanguageTokens | None = field(default=None, repr=False)

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """RGB uint8 (H, W, 3) -> the normalised image at its own size (3, H, W)."""
        return self.views.tensor(pixels)

    def model_images(self, images: Tensor) -> dict[str, Tensor]:
        """``pixel_values`` and ``image_sizes`` of images (N, 3, H, W), built with
        differentiable ops; the layout reads this tiling until the next call on this thread."""
        inputs, tiling = self.views.inputs(images)
        self.layout.use(tiling, images.shape[0])
        return inputs


@dataclass
class AnyresCaptioner(_Anyres, LlavaCaptioner):
    """A :class:`~mmcam.adapters.hf.llava.LlavaCaptioner` whose ``prefix`` holds one image
    placeholder, expanded per image size; teacher forcing and ``generate`` read the same
    ``pixel_values`` and ``image_sizes``. The parent's ``attention`` option is refused."""

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced logits (N, L, V) of captions ``ids`` (N, L) for images (N, 3, H, W)."""
        if self.attention:
            raise ValueError("language-model attention maps are not offered for anyres models (their grid differs per view)")
        inputs = self.model_images(images)
        prefix = self.prompts.expand(self.prefix, images.shape[-2:])
        prompt = torch.tensor(prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
        self.layout.record(prompt, range(ids.shape[0]))
        logits = self.model(input_ids=torch.cat([prompt, ids], dim=1), **inputs).logits
        first = len(prefix) - 1
        return CaptionScores(logits[:, first : first + ids.shape[1]])

    def generate_batch(self, images: Tensor, beam_size: int) -> list[CaptionTokens]:
        """Captions of images (N, 3, H, W) of one size: one ``generate`` call."""
        inputs = self.model_images(images)
        prefix = self.prompts.expand(self.prefix, images.shape[-2:])
        prompt = torch.tensor(prefix, device=images.device).expand(images.shape[0], -1)
        with torch.no_grad(), eval_mode(self.model):
            sequences = self.model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), **inputs,
                num_beams=beam_size, do_sample=False, max_new_tokens=self.max_new_tokens,
            )
        sized = dataclasses.replace(self, prefix=tuple(prefix))
        return [sized.caption_of(sequence.tolist()) for sequence in sequences]


@dataclass
class AnyresAnswerScorer(_Anyres, LlavaAnswerScorer):
    """A :class:`~mmcam.adapters.hf.llava.LlavaAnswerScorer` whose question ids hold one image
    placeholder, expanded per image size before the model reads them."""

    def tokenize(self, question: str) -> QuestionTokens:
        tokens = super().tokenize(question)
        return dataclasses.replace(tokens, ids=self.prompts.template(question))

    def image_features(self, images: Tensor) -> list[Tensor]:
        """Per image, the (image tokens, C) features the language model reads."""
        config = self.model.config
        return self.model.model.get_image_features(
            **self.model_images(images),
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output

    def score(self, images: Tensor, question_ids: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        """log p(answer a | image n, prompt n), (N, A); see the parent class."""
        return super().score(images, self._expanded(question_ids, images), candidates)

    def generate_answers(self, images: Tensor, question_ids: Tensor, count: int) -> list[list[Candidate]]:
        """Per item, its ``count`` best distinct answers (greedy, or beam search)."""
        beams = 1 if count == 1 else 2 * count
        inputs = self.model_images(images)
        answers = []
        with torch.no_grad(), eval_mode(self.model):
            for n, prompt in enumerate(self._unpadded(self._expanded(question_ids, images))):
                sequences = self.model.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt),
                    **{name: value[n : n + 1] for name, value in inputs.items()},
                    num_beams=beams, num_return_sequences=beams, do_sample=False, min_new_tokens=1,
                    max_new_tokens=self.max_new_tokens,
                )
                answers.append(self.distinct_answers(sequences[:, prompt.shape[1] :].tolist(), count))
        return answers

    def _expanded(self, question_ids: Tensor, images: Tensor) -> Tensor:
        """Padded template ids (N, L) -> padded ids (N, L') with the placeholders expanded."""
        size = tuple(images.shape[-2:])
        rows = [self.prompts.expand(prompt[0].tolist(), size) for prompt in self._unpadded(question_ids)]
        return pad_ids(rows, self.pad_id).to(question_ids.device)


def _parts(loaded: Loaded, layer: str) -> dict[str, Any]:
    """The views, prompt and layout of a loaded checkpoint."""
    processor = processor_of(loaded)
    views = AnyresViews.from_processor(processor.image_processor, loaded.model.config, loaded.name)
    prompts = AnyresPrompt(LlavaPrompt(processor, views.settings, loaded.name))
    return {"views": views, "prompts": prompts, "layout": _layout(loaded.model, layer, prompts)}


def _layout(model: nn.Module, layer: str, prompts: AnyresPrompt) -> TileLayout | LanguageTokens:
    """The layout of ``layer``: a vision tower block's or the projector's tokens of the tiles, or
    a language-model layer's (but the last's) states at the image placeholders; InputError for
    any other layer."""
    name, module = resolve_layer(model, layer)
    tiles = TileLayout(model, name)
    if any(_holds(model.get_submodule(part), module) for part in (TOWER, PROJECTOR)):
        return tiles
    blocks = model.get_submodule(LANGUAGE_MODEL).layers
    if any(_holds(block, module) for block in blocks[:-1]):
        return LanguageTokens(tiles, model.config, prompts.image_token_id, prompts.count)
    raise InputError(
        f"layer {name!r} holds no image tokens on the tile grid; choose a vision tower block "
        f"({TOWER}.encoder.layers.K), the projector ({PROJECTOR}) or a language-model layer "
        f"{LANGUAGE_MODEL}.layers.K with K < {len(blocks) - 1} (the last one's states at the image "
        "tokens reach no scored token)"
    )


def _holds(container: nn.Module, module: nn.Module) -> bool:
    return any(module is part for part in container.modules())


def captioner(loaded: Loaded, layer: str, instruction: str | None = None) -> CaptionAdapter:
    """The caption follows the chat-template prompt (``instruction`` and the image)."""
    parts = _parts(loaded, layer)
    config, generation = loaded.model.config, loaded.model.generation_config
    scorer = AnyresCaptioner(
        loaded.name, loaded.model, loaded.tokenizer, parts["views"].settings, layer, parts["layout"],
        prefix=parts["prompts"].template(instruction or DEFAULT_INSTRUCTION),
        end_ids=_end_ids(generation.eos_token_id, config.text_config.eos_token_id), **parts,
    )
    return CaptionAdapter(scorer)


def answers(loaded: Loaded, layer: str) -> GenerativeVQAAdapter:
    """The question in the chat-template prompt; y^c = log p(answer + end | image, prompt)."""
    parts = _parts(loaded, layer)
    config, generation = loaded.model.config, loaded.model.generation_config
    scorer = AnyresAnswerScorer(
        loaded.model, loaded.tokenizer, parts["views"].settings, None, name=loaded.name, layer=layer,
        embedding_layer=None, reshape=parts["layout"], prompt=parts["prompts"].prompt,
        placeholders=parts["layout"] if isinstance(parts["layout"], LanguageTokens) else None,
        end_id=_first_id("eos_token_id", *_end_ids(generation.eos_token_id, config.text_config.eos_token_id)[:1]),
        **parts,
    )
    return GenerativeVQAAdapter(scorer)
