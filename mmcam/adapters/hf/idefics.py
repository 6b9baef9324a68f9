"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``):
captions and answers from a VLM that splits each image into tiles.

Images: the image processor's own rules decide each image's size and tile rows x cols (see
:mod:`~mmcam.adapters.hf.idefics_tiles`): ``preprocess`` returns the resized (C, rows * M,
cols * M) image, and the forward pass cuts it into the M x M tiles plus the global view (the
model's ``pixel_values`` (N, rows * cols + 1, C, M, M) and an all-ones ``pixel_attention_mask``),
so gradients reach the image. Images of different aspect ratios have different sizes and run in
separate passes.

Prompt: the checkpoint's chat template renders a user turn with the image and the instruction
(or question); its one ``<image>`` is replaced by the processor's own expansion for the image's
tiles (``<fake_token_around_image><row_i_col_j>`` + ``image_seq_len`` image tokens per tile, a
newline per row, then ``<fake_token_around_image><global-img>`` and the global view's tokens;
a one-tile image gets the global form only), tokenized as the processor tokenizes it. Row
``len(prompt) - 1 + t`` of the logits scores text token t, as ``generate`` scores it.

Layers, each a ``--layer`` choice:

- ``model.vision_model.post_layernorm`` (default): the vision tower's output, the patch tokens
  the connector reads, tile / patch per tile side. The last encoder layer
  (``model.vision_model.encoder.layers.K``, also a choice) feeds that layer norm, which ignores
  each token's scale and mean, so the gradient there is orthogonal to the activation: HiResCAM
  is ~0 (measured on the tiny test model: at most 3e-5 there, 1.4e-2 after the layer norm);
- ``model.connector`` (the projector): the image tokens the language model reads, after the
  pixel shuffle (``scale_factor``: one token per s x s patches, row by row over the tile's
  coarser grid), tile / patch / s per tile side;
- ``model.text_model.layers.K`` (any module under ``model.text_model``): language-model layer
  K's hidden states at the image-token positions, on the connector's grid
  (:class:`~mmcam.adapters.hf.idefics_tiles.LanguageTokenGrid`); K below the last layer, whose
  outputs at the image positions reach no later token (their gradient is zero, and mmcam warns).

Each way, each tile's tokens are stitched into one grid over the whole image at the tile's
place (:class:`~mmcam.adapters.hf.idefics_tiles.TileGrid`): the map covers the whole original
image, which the processor resized whole (no crop), and is stretched back onto it. The global
view's tokens are left out of the map: it explains the score's dependence through the tiles.
The default is the vision tower's output: no trained Idefics3 checkpoint is available here to
measure which layer grounds words better.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...core.hooks import eval_mode
from ...errors import InputError
from ...targets import CaptionScores
from ..captioning import CaptionAdapter, CaptionTokens
from .idefics_tiles import LanguageTokenGrid, TileGrid, Tiling
from .llava import DEFAULT_INSTRUCTION, LlavaAnswerScorer, LlavaCaptioner
from .loading import Loaded, _end_ids, _first_id, processor_of
from .vqa import Candidate, GenerativeVQAAdapter, pad_ids

TOWER_OUTPUT = "model.vision_model.post_layernorm"
TOWER_LAYERS = "model.vision_model.encoder.layers"
CONNECTOR = "model.connector"
LANGUAGE_MODEL = "model.text_model"
_NAMED_TOKEN = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class IdeficsPrompt:
    """Prompt token ids from the checkpoint's processor: :meth:`ids` with one image token,
    :meth:`expand` with it replaced by the processor's expansion for an image's tiles."""

    processor: Any
    name: str
    _expansions: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        processor = self.processor
        if not getattr(processor, "chat_template", None):
            raise InputError(
                f"{self.name}'s processor has no chat template (chat_template.jinja); save the processor with one"
            )
        if not callable(getattr(processor, "replace_image_token", None)):
            raise InputError(f"{self.name}'s processor {type(processor).__name__} does not expand image tokens into tiles")
        needed = [processor.image_token, processor.fake_image_token]
        needed.append(getattr(processor, "global_image_token", None) or getattr(processor, "global_image_tag", None))
        self._check_tokens(needed)

    def _check_tokens(self, tokens: Sequence[str | None]) -> None:
        vocabulary = self.processor.tokenizer.get_vocab()
        missing = [str(token) for token in tokens if token not in vocabulary]
        if missing:
            raise InputError(f"{self.name}'s tokenizer lacks the image token(s) {', '.join(missing)}")

    @property
    def image_token_id(self) -> int:
        return int(self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token))

    def ids(self, text: str) -> tuple[int, ...]:
        """Token ids of a user turn with the image and ``text``, then the assistant's turn
        opening, with the one image token not yet expanded."""
        tokenizer = self.processor.tokenizer
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        rendered = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        bos = getattr(tokenizer, "bos_token", None)
        ids = tokenizer(rendered, add_special_tokens=not (bos and rendered.startswith(bos)))["input_ids"]
        if ids.count(self.image_token_id) != 1:
            raise InputError(f"{self.name}'s chat template renders {ids.count(self.image_token_id)} image tokens for one image")
        return tuple(ids)

    def expand(self, ids: Sequence[int], rows: int, cols: int) -> tuple[int, ...]:
        """``ids`` with its image token replaced by the processor's expansion for rows x cols
        tiles (0, 0: one view), tokenized as the processor tokenizes it."""
        if (rows, cols) not in self._expansions:
            text = self.processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0)
            self._check_tokens(sorted(set(_NAMED_TOKEN.findall(text))))
            self._expansions[rows, cols] = tuple(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        position = list(ids).index(self.image_token_id)
        return (*ids[:position], *self._expansions[rows, cols], *ids[position + 1 :])


@dataclass
class ImageViews:
    """The model's image inputs from preprocessed images (:class:`Tiling`), recording each
    pass's tile layout in the map's :class:`TileGrid` and, for a language-model layer, its
    rows' image-token positions in ``language``."""

    tiling: Tiling
    grid: TileGrid
    language: LanguageTokenGrid | None = None

    @property
    def reshape(self) -> TileGrid | LanguageTokenGrid:
        """How the hooked layer's output becomes the map's grid."""
        return self.grid if self.language is None else self.language

    def rows(self, prompts: Sequence[Sequence[int]], owners: Sequence[int], image_id: int) -> None:
        """The language model's rows of the coming pass: row r begins with ``prompts[owners[r]]``."""
        if self.language is not None:
            positions = [[p for p, token in enumerate(prompt) if token == image_id] for prompt in prompts]
            self.language.record([positions[n] for n in owners], list(owners))

    def inputs(self, images: Tensor) -> dict[str, Tensor]:
        """``pixel_values`` (N, F, C, M, M) and ``pixel_attention_mask`` (N, F, M, M) of images
        (N, C, H2, W2), as the processor gives them (every view is a whole tile)."""
        rows, cols = self.tiling.layout(images)
        views = self.tiling.views(images)
        self.grid.record(images.shape[0], rows, cols)
        mask = torch.ones((*views.shape[:2], *views.shape[-2:]), dtype=torch.long, device=views.device)
        return {"pixel_values": views, "pixel_attention_mask": mask}


@dataclass
class IdeficsCaptioner(LlavaCaptioner):
    """A captioner whose prompt (``instruction_ids``, expanded for each image size's tiles)
    precedes the caption; ``prefix`` is empty because the prompt depends on the image."""

    prompt: IdeficsPrompt | None = field(default=None, repr=False)
    views: ImageViews | None = field(default=None, repr=False)
    instruction_ids: tuple[int, ...] = ()

    def preprocess(self, pixels: Any) -> Tensor:
        return self.views.tiling.preprocess(pixels)

    def prompt_ids(self, images: Tensor) -> tuple[int, ...]:
        """The prompt for images (N, C, H2, W2), image tokens expanded for their tiles."""
        return self.prompt.expand(self.instruction_ids, *self.views.tiling.layout(images))

    def generate_batch(self, images: Tensor, beam_size: int) -> list[CaptionTokens]:
        """Captions of images (N, C, H2, W2) of one size: one ``generate`` call."""
        prefix = self.prompt_ids(images)
        prompt = torch.tensor(prefix, device=images.device).expand(images.shape[0], -1)
        with torch.no_grad(), eval_mode(self.model):
            sequences = self.model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), **self.views.inputs(images),
                num_beams=beam_size, do_sample=False, max_new_tokens=self.max_new_tokens,
            )
        return [self.caption_after(prefix, sequence.tolist()) for sequence in sequences]

    def caption_after(self, prefix: Sequence[int], sequence: Sequence[int]) -> CaptionTokens:
        """The caption in a generated ``sequence`` that begins with the prompt ``prefix``."""
        if tuple(sequence[: len(prefix)]) != tuple(prefix):
            raise ValueError(f"{self.name} generated a sequence that does not begin with its prompt")
        return self.caption_of(sequence[len(prefix) :])

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced logits (N, L, V) of captions ``ids`` (N, L) after the prompt."""
        prefix = self.prompt_ids(images)
        prompt = torch.tensor(prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
        self.views.rows([prefix] * ids.shape[0], range(ids.shape[0]), self.prompt.image_token_id)
        logits = self.model(input_ids=torch.cat([prompt, ids], dim=1), **self.views.inputs(images)).logits
        first = len(prefix) - 1
        return CaptionScores(logits[:, first : first + ids.shape[1]])


@dataclass
class IdeficsAnswerScorer(LlavaAnswerScorer):
    """:class:`LlavaAnswerScorer` on tiles: question ids carry the prompt with one image token,
    expanded for the images' tiles before the model reads them."""

    views: ImageViews | None = field(default=None, repr=False)

    def preprocess(self, pixels: Any) -> Tensor:
        return self.views.tiling.preprocess(pixels)

    def prompt_ids(self, images: Tensor, question_ids: Tensor) -> Tensor:
        """Question ids (N, L) with one image token -> (N, L') expanded for the images' tiles."""
        layout = self.views.tiling.layout(images)
        prompts = [self.prompt.expand(prompt[0].tolist(), *layout) for prompt in self._unpadded(question_ids)]
        return pad_ids(prompts, self.pad_id).to(question_ids.device)

    def generate_answers(self, images: Tensor, question_ids: Tensor, count: int) -> list[list[Candidate]]:
        views = self.views.inputs(images)["pixel_values"]
        return super().generate_answers(views, self.prompt_ids(images, question_ids), count)

    def score(self, images: Tensor, question_ids: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        expanded = self.prompt_ids(images, question_ids)
        prompts = [prompt[0].tolist() for prompt in self._unpadded(expanded)]
        owners = [n for n, items in enumerate(candidates) for _ in items]  # the rows :meth:`LlavaAnswerScorer.score` reads
        self.views.rows(prompts, owners, self.prompt.image_token_id)
        return super().score(images, expanded, candidates)

    def image_features(self, images: Tensor) -> Tensor:
        """(N, (rows * cols + 1) * image_seq_len, C): the connector's tokens of each image's views."""
        features = self.model.model.get_image_features(**self.views.inputs(images)).pooler_output
        return torch.stack(list(features))


def default_layer(model: nn.Module) -> str:
    """The vision tower's output (its post-layernorm), which the connector reads."""
    return TOWER_OUTPUT


def _parts(loaded: Loaded, layer: str) -> tuple[IdeficsPrompt, ImageViews, tuple[int, ...]]:
    processor = processor_of(loaded)
    prompt = IdeficsPrompt(processor, loaded.name)
    expected = int(getattr(loaded.model.model, "image_seq_len", processor.image_seq_len))
    if int(processor.image_seq_len) != expected:
        raise InputError(
            f"{loaded.name}'s processor expands an image to {processor.image_seq_len} tokens per view, but the model "
            f"reads {expected}; save the processor with image_seq_len={expected}"
        )
    config, generation = loaded.model.config, loaded.model.generation_config
    ends = _end_ids(generation.eos_token_id, config.text_config.eos_token_id)
    tiling = Tiling.from_processor(processor.image_processor, loaded.name)
    side = tiling.tile // loaded.model.config.vision_config.patch_size  # the vision tower's patches per tile side
    coarse = layer == CONNECTOR or layer.startswith((f"{CONNECTOR}.", f"{LANGUAGE_MODEL}."))
    grid = TileGrid(side // loaded.model.config.scale_factor if coarse else side)
    language = LanguageTokenGrid(grid) if layer.startswith(f"{LANGUAGE_MODEL}.") else None
    return prompt, ImageViews(tiling, grid, language), ends


def captioner(loaded: Loaded, layer: str, instruction: str | None = None) -> CaptionAdapter:
    """Idefics3 / SmolVLM captioning: the caption follows the chat-template prompt."""
    prompt, views, ends = _parts(loaded, layer)
    scorer = IdeficsCaptioner(
        loaded.name, loaded.model, prompt.processor.tokenizer, views.tiling.normalise, layer, views.reshape,
        prefix=(), end_ids=ends, prompt=prompt, views=views,
        instruction_ids=prompt.ids(instruction or DEFAULT_INSTRUCTION),
    )
    return CaptionAdapter(scorer)


def answers(loaded: Loaded, layer: str) -> GenerativeVQAAdapter:
    """Idefics3 / SmolVLM VQA: the question in the chat-template prompt; y^c = log p(answer + end)."""
    prompt, views, ends = _parts(loaded, layer)
    scorer = IdeficsAnswerScorer(
        loaded.model, prompt.processor.tokenizer, views.tiling.normalise, None, name=loaded.name, layer=layer,
        embedding_layer=None, reshape=views.reshape, prompt=prompt, views=views,
        end_id=_first_id("eos_token_id", *ends[:1]),
    )
    return GenerativeVQAAdapter(scorer)
