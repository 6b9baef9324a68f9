"""Qwen-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
``Qwen3VLForConditionalGeneration``): captions and answers from dynamic-resolution VLMs.

Images: each image keeps its aspect ratio. The checkpoint's image processor resizes it by its
own rules (``smart_resize`` with its ``min_pixels`` / ``max_pixels``, sides multiples of
``patch_size * merge_size``); ``preprocess`` returns that resized, normalised image (C, H', W')
and ``score`` builds the flattened patches and ``image_grid_thw`` from it inside the forward pass
(:mod:`~mmcam.adapters.hf.qwen_vl_inputs`), so Guided Backprop reaches the image. The map covers
the whole original image (nothing is cropped) and is stretched back onto it.

Prompts: the checkpoint's chat template renders a user turn with the image and the instruction
(or the question), and the processor expands its image placeholder into h * w / m^2 image tokens
for the image's grid. Position ids are the model's own M-RoPE ids (``get_rope_index``: one
(t, h, w) position per image token, text after the image continuing from the largest), computed
for the padded rows with their attention mask, so teacher forcing scores each token as
``generate`` does.

Layers (``--layer``), each laid out on the image's own grid (:mod:`~mmcam.adapters.hf.qwen_vl_layout`):

- ``model.visual.blocks.K``: vision block K's patch tokens, on the (h, w) patch grid. The last
  block is what the merger, hence the language model, reads: the default of Qwen2-VL and
  Qwen2.5-VL.
- ``model.visual.merger``: the projector's output, the image tokens the language model reads,
  on the merged (h / m, w / m) grid. (Qwen3-VL's ``model.visual.deepstack_merger_list.I`` too.)
- ``model.language_model.layers.K``: language-model layer K's hidden states at the image-token
  positions, on the merged grid (K below the last layer, whose states there reach no later
  token). Qwen3-VL adds its DeepStack features to the output of its first layers after the
  layer returns it: layer K < ``len(deepstack_visual_indexes)`` is read before its own
  DeepStack addition (the gradient is the same, the activations lack that addition).

Qwen3-VL also feeds the language model DeepStack features: the outputs of the vision blocks in
``deepstack_visual_indexes``, each through its own merger, added to the hidden states of the
first language-model layers at the image positions. Those features bypass the last block, so the
last block's (and the merger's) gradient holds only the main path's share of a word's
dependence on the image, not the DeepStack paths'. Qwen3-VL's default is therefore the earliest
DeepStack block: every path from the image to the language model passes through its output
(the later blocks, the main merger, every DeepStack merger), so its gradient is the whole
dependence. What it does not include is anything before it; its maps are those of an
intermediate block (less abstract than the last block's). Without DeepStack layers the default is
the last block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ...core.hooks import eval_mode
from ...errors import InputError
from ...targets import CaptionScores
from ..captioning import CaptionAdapter, CaptionTokens
from .captioning import TransformersCaptioner
from .llava import ImageTokenRows, LlavaAnswerScorer, _eager_attention
from .loading import Loaded, _end_ids, _first_id, processor_of
from .qwen_vl_inputs import QwenImages
from .qwen_vl_layout import LanguageTokens, PassLayout, VisionTokens, PassState
from .vqa import Candidate, GenerativeVQAAdapter

DEFAULT_INSTRUCTION = "Describe the image."
BLOCKS = "model.visual.blocks"
MERGER = "model.visual.merger"
LANGUAGE_LAYERS = "model.language_model.layers"


def default_layer(model: nn.Module) -> str:
    """The last vision block, or Qwen3-VL's earliest DeepStack block (see the module docstring)."""
    blocks = len(model.get_submodule(BLOCKS))
    deepstack = list(getattr(model.config.vision_config, "deepstack_visual_indexes", None) or [])
    return f"{BLOCKS}.{min(deepstack) if deepstack else blocks - 1}"


def layout_of(layer: str, model: nn.Module, merge_size: int, state: PassState) -> VisionTokens | LanguageTokens:
    """The layout object that reads ``layer``'s output, or an InputError naming the choices."""
    if re.fullmatch(rf"{re.escape(BLOCKS)}\.\d+(\..+)?", layer):
        return VisionTokens(merge_size, merged=False, state=state)
    if layer == MERGER or re.fullmatch(r"model\.visual\.deepstack_merger_list\.\d+", layer):
        return VisionTokens(merge_size, merged=True, state=state)
    if re.fullmatch(rf"{re.escape(LANGUAGE_LAYERS)}\.\d+", layer):
        last = len(model.get_submodule(LANGUAGE_LAYERS)) - 1
        if int(layer.rpartition(".")[2]) == last:
            raise InputError(
                f"{layer} is the language model's last layer: its states at the image tokens reach no later "
                f"token, so their gradient is zero; pick {LANGUAGE_LAYERS}.K with K < {last}"
            )
        return LanguageTokens(state=state)
    raise InputError(
        f"layer {layer!r} has no image layout mmcam knows; Qwen-VL maps are taken at {BLOCKS}.K, {MERGER} "
        f"or {LANGUAGE_LAYERS}.K"
    )


@dataclass(frozen=True)
class QwenPrompt:
    """Prompt token ids from the checkpoint's processor, with ONE image placeholder: what the
    chat template renders, before the processor repeats the placeholder once per image token."""

    processor: Any
    images: QwenImages
    name: str
    _cache: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not getattr(self.processor, "chat_template", None):
            raise InputError(
                f"{self.name}'s processor has no chat template (chat_template.jinja); save the processor with one"
            )
        tokenizer, token = self.processor.tokenizer, getattr(self.processor, "image_token", None)
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise InputError(f"{self.name}'s tokenizer has no image token {token!r} (extra_special_tokens image_token)")

    @property
    def image_token_id(self) -> int:
        return int(self.processor.image_token_id)

    def ids(self, text: str) -> tuple[int, ...]:
        """Token ids of a user turn with the image and ``text``, then the assistant's turn
        opening, as the processor tokenizes them, the image tokens collapsed to one."""
        if text not in self._cache:
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            rendered = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            side = self.images.patch_size * self.images.merge_size
            encoded = self.processor(images=Image.new("RGB", (side, side)), text=rendered, return_tensors="pt")
            ids = encoded["input_ids"][0].tolist()
            image = self.image_token_id
            collapsed = [token for n, token in enumerate(ids) if token != image or n == 0 or ids[n - 1] != image]
            if collapsed.count(image) != 1:
                raise InputError(f"{self.name}'s chat template renders {collapsed.count(image)} images for one; it must render one")
            self._cache[text] = tuple(collapsed)
        return self._cache[text]

    def expand(self, ids: Sequence[int], count: int) -> list[int]:
        """``ids`` with its one image placeholder repeated ``count`` times (as the processor does)."""
        at = list(ids).index(self.image_token_id)
        return [*ids[:at], *[self.image_token_id] * count, *ids[at + 1 :]]


@dataclass
class QwenPass:
    """Runs a Qwen-VL model on images (N, C, H', W') and token rows, each row reading one image
    (``owners[row]``): the vision tower once per image, the language model once per row."""

    model: nn.Module
    images: QwenImages
    prompt: QwenPrompt
    state: PassState = field(default_factory=PassState)

    def rows(self, images: Tensor, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """Prompts (one placeholder each) with the image tokens of images of this size."""
        count = self.images.tokens((int(images.shape[-2]), int(images.shape[-1])))
        return [self.prompt.expand(prompt, count) for prompt in prompts]

    def logits(self, images: Tensor, ids: Tensor, attention: Tensor, owners: Sequence[int]) -> Tensor:
        """Logits (B, L, V) of right-padded rows ``ids`` (B, L), image tokens expanded, row b
        reading image ``owners[b]``; sets the pass's layout for the hooked layer."""
        return self.forward(images, ids, attention, owners).logits

    def forward(self, images: Tensor, ids: Tensor, attention: Tensor, owners: Sequence[int], **options: Any) -> Any:
        """The model's output for :meth:`logits`' inputs (``options``: e.g. ``output_attentions``)."""
        pixel_values, grid = self.images.patches(images)
        token_types = ((ids == self.prompt.image_token_id) & attention.bool()).int()
        row_grid = grid[list(owners)]
        inner = self.model.model
        position_ids = inner.get_rope_index(
            ids, mm_token_type_ids=token_types, image_grid_thw=row_grid, attention_mask=attention
        )[0]
        grids = self._grids(grid)
        rows = ImageTokenRows(self.prompt.image_token_id, _merged(grids, self.images.merge_size))
        rows.record(ids.masked_fill(~attention.bool(), -1), owners)
        self.state.set(PassLayout(grids, self._window_index(grid), rows))
        encoded = inner.get_image_features(pixel_values, grid, return_dict=True)
        encoded.pooler_output = tuple(encoded.pooler_output[n] for n in owners)
        if getattr(encoded, "deepstack_features", None) is not None:
            encoded.deepstack_features = [tuple(feature[n] for n in owners) for feature in encoded.deepstack_features]
        return self.model(
            input_ids=ids, attention_mask=attention, position_ids=position_ids, image_grid_thw=row_grid,
            mm_token_type_ids=token_types, mm_encoder_outputs={"image": encoded}, **options,
        )

    def generate(self, images: Tensor, prompt: Sequence[int], **options: Any) -> Tensor:
        """``generate``'s new tokens (N * beams, new) for images (N, C, H', W') sharing ``prompt``."""
        (row,) = self.rows(images, [prompt])
        ids = torch.tensor([row] * images.shape[0], device=images.device)
        pixel_values, grid = self.images.patches(images)
        with torch.no_grad(), eval_mode(self.model):
            sequences = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values, image_grid_thw=grid,
                mm_token_type_ids=(ids == self.prompt.image_token_id).int(), do_sample=False, **options,
            )
        if not torch.equal(sequences[:, : ids.shape[1]], ids.repeat_interleave(sequences.shape[0] // ids.shape[0], 0)):
            raise ValueError("generate returned a sequence that does not begin with the prompt")
        return sequences[:, ids.shape[1] :]

    def _grids(self, grid: Tensor) -> tuple[tuple[int, int], ...]:
        return tuple((int(h), int(w)) for _, h, w in grid.tolist())

    def _window_index(self, grid: Tensor) -> Tensor | None:
        """Qwen2.5-VL's window order of the tower's merge units, from the model's own function."""
        visual = self.model.model.visual
        if getattr(visual, "window_size", None) is None:
            return None
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(grid, visual.spatial_merge_size, visual.window_size, visual.patch_size)
        return window_index


@dataclass
class QwenCaptioner(TransformersCaptioner):
    """A :class:`TransformersCaptioner` whose prefix is the chat-template prompt with the image
    tokens of each image's size (``prefix`` itself is empty: it depends on the image). With
    ``attention`` the scores also carry the language model's attention from each step to the
    image tokens, mean over layers and heads, on the merged grid (eager attention: slower)."""

    qwen: QwenPass | None = field(default=None, repr=False)
    instruction: str = DEFAULT_INSTRUCTION
    attention: bool = False

    def preprocess(self, pixels) -> Tensor:
        return self.qwen.images.preprocess(pixels)

    def generate_batch(self, images: Tensor, beam_size: int) -> list[CaptionTokens]:
        """Captions of same-size images (N, C, H', W'): one ``generate`` call from the prompt."""
        new = self.qwen.generate(images, self.qwen.prompt.ids(self.instruction), num_beams=beam_size, max_new_tokens=self.max_new_tokens)
        return [self.caption_of(sequence.tolist()) for sequence in new]

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced logits (N, L, V) of captions ``ids`` (N, L): row t scores ids[:, t]."""
        (prompt,) = self.qwen.rows(images, [self.qwen.prompt.ids(self.instruction)])
        rows = torch.cat([torch.tensor(prompt, device=ids.device).expand(ids.shape[0], -1), ids], dim=1)
        with _eager_attention(self.model, self.attention):
            output = self.qwen.forward(images, rows, torch.ones_like(rows), range(ids.shape[0]), output_attentions=self.attention)
        steps = slice(len(prompt) - 1, len(prompt) - 1 + ids.shape[1])
        attention = self.qwen.state.get().rows.attention(output.attentions, steps) if self.attention else None
        return CaptionScores(output.logits[:, steps], attention)


@dataclass
class QwenAnswerScorer(LlavaAnswerScorer):
    """:class:`LlavaAnswerScorer` for Qwen-VL: y^c = log p(answer c + end | image, prompt).

    The question ids are the prompt with one image placeholder; each pass expands it for its
    images' size. The vision tower runs once per minibatch; the language model reads one row per
    (item, candidate), right-padded, with the item's image features (and, for Qwen3-VL, its
    DeepStack features) at its image tokens."""

    qwen: QwenPass | None = field(default=None, repr=False)

    def preprocess(self, pixels) -> Tensor:
        return self.qwen.images.preprocess(pixels)

    def generate_answers(self, images: Tensor, question_ids: Tensor, count: int) -> list[list[Candidate]]:
        beams = 1 if count == 1 else 2 * count
        answers = []
        for n, prompt in enumerate(self._unpadded(question_ids)):
            new = self.qwen.generate(
                images[n : n + 1], prompt[0].tolist(), num_beams=beams, num_return_sequences=beams,
                min_new_tokens=1, max_new_tokens=self.max_new_tokens,
            )
            answers.append(self.distinct_answers(new.tolist(), count))
        return answers

    def score(self, images: Tensor, question_ids: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        """log p(answer a | image n, prompt n) for ``candidates[n][a]``, shape (N, A); columns
        past an item's own candidates hold -inf."""
        prompts = self.qwen.rows(images, [prompt[0].tolist() for prompt in self._unpadded(question_ids)])
        ids, attention, scored, owners = self.answer_rows(prompts, candidates, images.device)
        return self.answer_table(self.qwen.logits(images, ids, attention, owners), ids, scored, candidates)


def _merged(grids: Sequence[tuple[int, int]], merge_size: int) -> tuple[int, int]:
    """The merged grid (h / m, w / m) shared by a pass's images."""
    if len(set(grids)) != 1:
        raise InputError("images of different sizes in one Qwen-VL pass; explain them in separate calls")
    height, width = grids[0]
    return height // merge_size, width // merge_size


def _pass(loaded: Loaded, layer: str) -> tuple[QwenPass, VisionTokens | LanguageTokens]:
    processor = processor_of(loaded)
    images = QwenImages.of(processor.image_processor, loaded.model.config.vision_config, loaded.name)
    qwen = QwenPass(loaded.model, images, QwenPrompt(processor, images, loaded.name))
    if qwen.prompt.image_token_id != loaded.model.config.image_token_id:
        raise InputError(
            f"{loaded.name}: the processor's image token is id {qwen.prompt.image_token_id}, the model's "
            f"config.image_token_id {loaded.model.config.image_token_id}; save the processor that belongs to the model"
        )
    return qwen, layout_of(layer, loaded.model, images.merge_size, qwen.state)


def _end_id_list(loaded: Loaded) -> tuple[int, ...]:
    config, generation = loaded.model.config, loaded.model.generation_config
    return _end_ids(generation.eos_token_id, config.text_config.eos_token_id)


def captioner(loaded: Loaded, layer: str, instruction: str | None = None) -> CaptionAdapter:
    """Qwen-VL captions: the caption follows the chat-template prompt (``instruction`` and the image)."""
    qwen, layout = _pass(loaded, layer)
    scorer = QwenCaptioner(
        loaded.name, loaded.model, loaded.tokenizer, None, layer, layout, prefix=(), end_ids=_end_id_list(loaded),
        qwen=qwen, instruction=instruction or DEFAULT_INSTRUCTION,
    )
    return CaptionAdapter(scorer)


def answers(loaded: Loaded, layer: str) -> GenerativeVQAAdapter:
    """Qwen-VL VQA: the question in the chat-template prompt; y^c = log p(answer + end | prompt)."""
    qwen, layout = _pass(loaded, layer)
    scorer = QwenAnswerScorer(
        loaded.model, loaded.tokenizer, None, None, name=loaded.name, layer=layer, embedding_layer=None,
        reshape=layout, prompt=qwen.prompt, end_id=_first_id("eos_token_id", *_end_id_list(loaded)[:1]), qwen=qwen,
    )
    return GenerativeVQAAdapter(scorer)
