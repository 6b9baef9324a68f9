"""PaliGemma and Gemma 3 (``PaliGemmaForConditionalGeneration``, ``Gemma3ForConditionalGeneration``):
captions and answers from a SigLIP vision tower and a Gemma language model.

Prompts are the checkpoint's processor's own:

- PaliGemma has no chat template. Its processor writes ``image_seq_length`` image placeholders,
  the bos, the prefix text, then a newline; the prefix is a task (``caption en`` by default for
  captions, ``instruction=`` to change it) or ``answer en QUESTION`` for questions. The model is
  a prefix LM: ``token_type_ids`` are 0 on the prompt (full attention among its tokens) and 1 on
  the caption or answer (causal), as its processor and ``generate`` give them.
- Gemma 3 renders a user turn with its chat template; its processor replaces the image marker
  with ``<start_of_image>``, ``mm_tokens_per_image`` image tokens and ``<end_of_image>``.
  ``token_type_ids`` are 1 on the image tokens (full attention among them), 0 elsewhere.
  Pan-and-scan crops are not supported (a clear error when the image processor makes them).

Row ``len(prompt) - 1 + t`` of the logits scores caption token t, as ``generate`` scores it.

Images are resized as a whole to the processor's fixed SigLIP input size (no crop), so the map
covers the whole original image and is stretched back onto it. Layer choices (``--layer``):

- ``model.vision_tower.post_layernorm`` (default): the vision tower's output, what the
  projector reads; or any other module of the vision tower (``model.vision_tower.encoder.layers.K``):
  the (h, w) patch grid, the input size over the patch size. The last block's output is not the
  default because it feeds that layer norm, which ignores each token's scale: the gradient at a
  token is orthogonal to its activation there, so HiResCAM (gradient x activation summed over
  channels) is ~0 at every patch (tested);
- ``model.multi_modal_projector``: the image tokens the language model reads. PaliGemma's
  projector is linear, so this is the same (h, w) grid; Gemma 3's average-pools the patch grid
  into sqrt(mm_tokens_per_image) tokens a side (4x4 patches each in the released models), a
  coarser grid. (Not ``model.multi_modal_projector.avg_pool``: an RMS norm follows it, so
  HiResCAM there is ~0 for the reason above.)

Language-model layers are not offered: their maps would need the image-token positions per
row, and the VQA scorer's language model reads one row per (image, candidate answer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ...core import TokenGrid
from ...errors import InputError
from ...targets import CaptionScores
from ..captioning import CaptionAdapter
from .llava import DEFAULT_INSTRUCTION, LlavaAnswerScorer, LlavaCaptioner, LlavaPrompt
from .loading import Loaded, _end_ids, _first_id, processor_of
from .vqa import GenerativeVQAAdapter

TOWER = "model.vision_tower"
TOWER_LAYERS = f"{TOWER}.encoder.layers"
PROJECTOR = "model.multi_modal_projector"
PALIGEMMA_CAPTION = "caption en"
PALIGEMMA_QUESTION = "answer en "


class Gemma3Prompt(LlavaPrompt):
    """Gemma 3's prompt: the chat template's user turn with the image and the text, the image
    marker expanded by the processor; ``token_type_ids`` mark the image tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if getattr(self.processor.image_processor, "do_pan_and_scan", False):
            raise InputError(
                f"{self.name}: pan-and-scan crops are not supported; save the image processor with do_pan_and_scan=False"
            )

    def token_types(self, ids: Tensor, prompt_lengths: Sequence[int]) -> Tensor:
        """(R, L): 1 at the image tokens (bidirectional attention among them), 0 elsewhere."""
        return (ids == self.image_token_id).long()


@dataclass(frozen=True)
class PaliGemmaPrompt(LlavaPrompt):
    """PaliGemma's prompt: image placeholders, bos, ``task`` + text, newline (its processor's
    format); ``token_type_ids`` are 0 on the prompt and 1 after it."""

    task: str = ""

    def __post_init__(self) -> None:
        tokenizer = self.processor.tokenizer
        if getattr(tokenizer, "bos_token", None) is None:
            raise InputError(f"{self.name}'s tokenizer has no bos token, which PaliGemma's prompt needs after the image")
        if not isinstance(getattr(self.processor, "image_seq_length", None), int):
            raise InputError(
                f"{self.name}'s image processor sets no image_seq_length (image tokens per image); save it with one"
            )

    @property
    def image_token_id(self) -> int:
        return int(self.processor.image_token_id)

    def ids(self, text: str) -> tuple[int, ...]:
        """Token ids of the image placeholders, bos, ``task + text`` and the newline."""
        height, width = self.image.size
        blank = Image.new("RGB", (width, height))
        encoded = self.processor(images=blank, text=self.processor.image_token + self.task + text, return_tensors="pt")
        return tuple(encoded["input_ids"][0].tolist())

    def token_types(self, ids: Tensor, prompt_lengths: Sequence[int]) -> Tensor:
        """(R, L): 0 on row r's first ``prompt_lengths[r]`` tokens (the prefix, full attention),
        1 after them (the caption or answer, and padding: causal)."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        return (positions[None] >= torch.tensor(list(prompt_lengths), device=ids.device)[:, None]).long()


@dataclass(frozen=True)
class VisionGrids:
    """Reshape of a layer's output onto the image: tokens (B, N, C) of a vision tower module on
    the (h, w) ``patches`` grid, of a projector module on the ``tokens`` grid (the image tokens
    the language model reads); (B, C, h, w) maps pass unchanged."""

    layer: str
    patches: tuple[int, int]
    tokens: tuple[int, int]

    def __call__(self, activations: Tensor) -> Tensor:
        if activations.dim() == 4:
            return activations
        grid = self.patches if self.layer.startswith(f"{TOWER}.") else self.tokens
        if activations.dim() != 3 or activations.shape[1] != grid[0] * grid[1]:
            raise ValueError(
                f"layer {self.layer!r} gives {tuple(activations.shape)}, not the {grid[0]}x{grid[1]} grid of "
                f"its image tokens; hook {TOWER_LAYERS}.K or {PROJECTOR}"
            )
        return TokenGrid(grid=grid)(activations)


def vision_grids(prompt: LlavaPrompt, model: nn.Module, layer: str) -> VisionGrids:
    """The patch grid (input size over patch size) and the grid of the image tokens the prompt
    holds (the processor's count: PaliGemma one per patch, Gemma 3 a square pooled grid),
    checked against the model's config; InputError for a layer outside the tower and projector."""
    if not layer.startswith((f"{TOWER}.", PROJECTOR)):
        raise InputError(
            f"layer {layer!r}: {prompt.name}'s maps are taken in the vision tower ({TOWER_LAYERS}.K) or at "
            f"the projector's output ({PROJECTOR})"
        )
    vision = model.config.vision_config
    if tuple(prompt.image.size) != (vision.image_size, vision.image_size):
        raise InputError(
            f"{prompt.name}: the image processor's size {prompt.image.size} is not the vision tower's "
            f"{vision.image_size}x{vision.image_size} input"
        )
    patches = prompt.grid(int(vision.patch_size))
    count = prompt.ids("").count(prompt.image_token_id)
    side = math.isqrt(count)
    pooled = getattr(model.config, "mm_tokens_per_image", None)
    if pooled is None and count != patches[0] * patches[1]:
        raise InputError(f"{prompt.name}: the processor writes {count} image tokens for {patches[0]}x{patches[1]} patches")
    if pooled is not None and (count != pooled or side * side != count or patches[0] % side):
        raise InputError(
            f"{prompt.name}: the processor writes {count} image tokens, not a square grid pooling the "
            f"{patches[0]}x{patches[1]} patches (mm_tokens_per_image {pooled})"
        )
    return VisionGrids(layer, patches, patches if pooled is None else (side, side))


@dataclass
class GemmaCaptioner(LlavaCaptioner):
    """A :class:`LlavaCaptioner` whose model also reads the prompt's ``token_type_ids``."""

    prompt: Any = None

    def text_inputs(self, ids: Tensor) -> dict[str, Tensor]:
        return {"token_type_ids": self.prompt.token_types(ids, [len(self.prefix)] * ids.shape[0])}

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced logits (N, L, V) of captions ``ids`` (N, L) after the prompt: row t
        scores ids[:, t]."""
        prefix = torch.tensor(self.prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
        text = torch.cat([prefix, ids], dim=1)
        logits = self.model(pixel_values=images, input_ids=text, **self.text_inputs(text)).logits
        first = len(self.prefix) - 1
        return CaptionScores(logits[:, first : first + ids.shape[1]])


@dataclass
class GemmaAnswerScorer(LlavaAnswerScorer):
    """A :class:`LlavaAnswerScorer` whose language model also reads ``token_type_ids`` and whose
    image features are the projector's output on the vision tower's last hidden state."""

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.model.get_image_features(pixel_values=images).pooler_output

    def text_inputs(self, ids: Tensor, prompt_lengths: Sequence[int]) -> dict[str, Tensor]:
        return {"token_type_ids": self.prompt.token_types(ids, prompt_lengths)}


def default_layer(model: nn.Module) -> str:
    """The vision tower's final layer norm (its output is what the projector reads); the last
    block where a tower has no such norm."""
    norm = f"{TOWER}.post_layernorm"
    if isinstance(getattr(model.get_submodule(TOWER), "post_layernorm", None), nn.Module):
        return norm
    return f"{TOWER_LAYERS}.{len(model.get_submodule(TOWER_LAYERS)) - 1}"


def _prompt(loaded: Loaded, task: str = "") -> LlavaPrompt:
    processor = processor_of(loaded)
    if loaded.image is None:
        raise InputError(f"{loaded.name}: the image processor names no fixed input size")
    if type(loaded.model).__name__.startswith("PaliGemma"):
        prompt: LlavaPrompt = PaliGemmaPrompt(processor, loaded.image, loaded.name, task)
    else:
        prompt = Gemma3Prompt(processor, loaded.image, loaded.name)
    if prompt.image_token_id != loaded.model.config.image_token_id:
        raise InputError(
            f"{loaded.name}: the processor's image token id {prompt.image_token_id} is not the model's "
            f"image_token_id {loaded.model.config.image_token_id}"
        )
    return prompt


def _end_tokens(loaded: Loaded) -> tuple[int, ...]:
    config, generation = loaded.model.config, loaded.model.generation_config
    return _end_ids(generation.eos_token_id, config.text_config.eos_token_id)


def captioner(loaded: Loaded, layer: str, instruction: str | None = None) -> CaptionAdapter:
    """The caption follows the prompt: PaliGemma's task prefix (``caption en``) or Gemma 3's
    user turn with ``instruction`` (``Describe the image.``) and the image."""
    paligemma = type(loaded.model).__name__.startswith("PaliGemma")
    prompt = _prompt(loaded)
    text = instruction or (PALIGEMMA_CAPTION if paligemma else DEFAULT_INSTRUCTION)
    scorer = GemmaCaptioner(
        loaded.name, loaded.model, loaded.tokenizer, loaded.image, layer, vision_grids(prompt, loaded.model, layer),
        prefix=prompt.ids(text), end_ids=_end_tokens(loaded), prompt=prompt,
    )
    return CaptionAdapter(scorer)


def answers(loaded: Loaded, layer: str) -> GenerativeVQAAdapter:
    """The question in the model's prompt (PaliGemma: ``answer en QUESTION``; Gemma 3: the user
    turn); y^c = log p(answer + end | prompt), the end being the token the model closes its
    answer with (Gemma 3's chat template: ``<end_of_turn>``)."""
    paligemma = type(loaded.model).__name__.startswith("PaliGemma")
    prompt = _prompt(loaded, PALIGEMMA_QUESTION if paligemma else "")
    scorer = GemmaAnswerScorer(
        loaded.model, loaded.tokenizer, loaded.image, None, name=loaded.name, layer=layer, embedding_layer=None,
        reshape=vision_grids(prompt, loaded.model, layer), prompt=prompt,
        end_id=_answer_end(prompt, _end_tokens(loaded)),
    )
    return GenerativeVQAAdapter(scorer)


def _answer_end(prompt: LlavaPrompt, ends: tuple[int, ...]) -> int:
    """The end token that closes an answer: the first of ``ends`` the chat template writes after
    an assistant's text (Gemma 3: ``<end_of_turn>``); the first end token without a template."""
    ends = ends or (_first_id("eos_token_id", prompt.processor.tokenizer.eos_token_id),)
    if not getattr(prompt.processor, "chat_template", None):
        return ends[0]
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
    ]
    rendered = prompt.processor.apply_chat_template(conversation, tokenize=False)
    after = rendered[rendered.rindex("yes") + len("yes") :]
    closing = prompt.processor.tokenizer(after, add_special_tokens=False)["input_ids"]
    return next((token for token in closing if token in ends), ends[0])
