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
  With ``do_pan_and_scan`` saved in its image processor, a wide or tall image is also cut into
  crops (:mod:`~mmcam.adapters.hf.gemma3_crops`): the prompt then holds the thumbnail's image
  tokens and each crop's, as the processor writes them when asked for crops (transformers'
  ``Gemma3Processor`` call makes none unless given ``do_pan_and_scan=True`` itself; mmcam
  follows the saved image processor).

Row ``len(prompt) - 1 + t`` of the logits scores caption token t, as ``generate`` scores it.

Images are resized as a whole to the processor's fixed SigLIP input size (no crop), so the map
covers the whole original image and is stretched back onto it; with pan-and-scan crops, each
layer's grid per view is stitched over the crops at their places in the image (the thumbnail's
tokens left out of the map, its gradient path still in Guided Backprop). Layer choices
(``--layer``):

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
- ``model.language_model.layers.K`` (K below the last): that layer's hidden states at the image
  tokens, on the image-token grid (LLaVA's :class:`~mmcam.adapters.hf.llava.ImageTokenRows`:
  the image tokens' states are the same in every row of an item, as the prompt holds them and
  what follows is causal; PaliGemma's prefix attention covers the prompt only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor, nn

from ...core import TokenGrid, resolve_layer
from ...errors import InputError
from ..captioning import CaptionAdapter
from .gemma3_crops import CropGrid, CropViews, PanAndScan
from .gemma_scorers import CropAnswerScorer, CropCaptioner, GemmaAnswerScorer, GemmaCaptioner
from .idefics_tiles import LanguageTokenGrid
from .llava import (
    DEFAULT_INSTRUCTION, LANGUAGE_MODEL, PROJECTOR, TOWER, TOWER_LAYERS, ImageTokenRows, LlavaPrompt, _inside,
    layer_layout,
)
from .loading import Loaded, _end_ids, _first_id, processor_of
from .vqa import GenerativeVQAAdapter

PALIGEMMA_CAPTION = "caption en"
PALIGEMMA_QUESTION = "answer en "


class Gemma3Prompt(LlavaPrompt):
    """Gemma 3's prompt: the chat template's user turn with the image and the text, the image
    marker expanded by the processor; ``token_type_ids`` mark the image tokens."""

    def crop_ids(self, text: str, crops: int) -> tuple[int, ...]:
        """:meth:`ids` for an image the processor cuts into ``crops`` pan-and-scan crops: its
        marker replaced, as the processor replaces it, by the thumbnail's image tokens and each
        crop's, then tokenized whole."""
        if not crops:
            return self.ids(text)
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        rendered = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        expansion = self.processor.replace_image_token({"num_crops": [crops]}, 0)
        bos = getattr(self.processor.tokenizer, "bos_token", None)
        expanded = rendered.replace(self.processor.image_token, expansion, 1)
        return tuple(self.processor.tokenizer(expanded, add_special_tokens=not (bos and rendered.startswith(bos)))["input_ids"])

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


def image_token_grid(prompt: LlavaPrompt, model: nn.Module) -> tuple[int, int]:
    """(h, w) of the image tokens the language model reads, from the processor's count in the
    prompt: PaliGemma one per patch (the input size over the patch size), Gemma 3 a square grid
    pooling the patch grid (``mm_tokens_per_image``); checked against the model's config."""
    vision = model.config.vision_config
    if tuple(prompt.image.size) != (vision.image_size, vision.image_size):
        raise InputError(
            f"{prompt.name}: the image processor's size {prompt.image.size} is not the vision tower's "
            f"{vision.image_size}x{vision.image_size} input"
        )
    patches = prompt.grid(int(vision.patch_size))
    count = prompt.ids("").count(prompt.image_token_id)
    pooled = getattr(model.config, "mm_tokens_per_image", None)
    if pooled is None:
        if count != patches[0] * patches[1]:
            raise InputError(f"{prompt.name}: the processor writes {count} image tokens for {patches[0]}x{patches[1]} patches")
        return patches
    side = math.isqrt(count)
    if count != pooled or side * side != count or patches[0] % side:
        raise InputError(
            f"{prompt.name}: the processor writes {count} image tokens, not a square grid pooling the "
            f"{patches[0]}x{patches[1]} patches (mm_tokens_per_image {pooled})"
        )
    return side, side


def layout(prompt: LlavaPrompt, model: nn.Module, layer: str) -> tuple[TokenGrid | ImageTokenRows, ImageTokenRows]:
    """The reshape of ``layer``'s output onto the image (see the module docstring) and the image
    placeholders' rows that the scorer records on each forward; InputError for a layer with no
    image tokens (or the last language-model layer, whose image-token states reach no score)."""
    rows = ImageTokenRows(prompt.image_token_id, image_token_grid(prompt, model))
    name, module = resolve_layer(model, layer)
    if not any(_inside(model, part, module) for part in (TOWER, PROJECTOR, f"{LANGUAGE_MODEL}.layers")):
        raise InputError(
            f"layer {name!r}: {prompt.name}'s maps are taken in the vision tower ({TOWER_LAYERS}.K), at the "
            f"projector's output ({PROJECTOR}) or in a language-model layer ({LANGUAGE_MODEL}.layers.K)"
        )
    return layer_layout(prompt, model, layer, rows), rows


def crop_views(prompt: Gemma3Prompt, model: nn.Module, layer: str, crops: PanAndScan) -> CropViews:
    """The crop layout of ``layer`` (the same choices as without crops, checked by :func:`layout`):
    the tower's patches or the image tokens per view side, stitched over the crops."""
    layout(prompt, model, layer)
    _, module = resolve_layer(model, layer)
    tokens = image_token_grid(prompt, model)[0]
    side = prompt.grid(int(model.config.vision_config.patch_size))[0] if _inside(model, TOWER, module) else tokens
    grid = CropGrid(side)
    language = LanguageTokenGrid(grid) if _inside(model, f"{LANGUAGE_MODEL}.layers", module) else None
    return CropViews(crops, grid, language)


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
    if _is_paligemma(loaded.model):
        prompt: LlavaPrompt = PaliGemmaPrompt(processor, loaded.image, loaded.name, task)
    else:
        prompt = Gemma3Prompt(processor, loaded.image, loaded.name)
    if prompt.image_token_id != loaded.model.config.image_token_id:
        raise InputError(
            f"{loaded.name}: the processor's image token id {prompt.image_token_id} is not the model's "
            f"image_token_id {loaded.model.config.image_token_id}"
        )
    return prompt


def _crops(prompt: LlavaPrompt, loaded: Loaded) -> PanAndScan | None:
    """Gemma 3's pan-and-scan settings when its image processor makes crops."""
    return None if _is_paligemma(loaded.model) else PanAndScan.from_processor(prompt.processor, loaded.image)


def _is_paligemma(model: nn.Module) -> bool:
    return "paligemma" in model.config.model_type


def _end_tokens(loaded: Loaded) -> tuple[int, ...]:
    config, generation = loaded.model.config, loaded.model.generation_config
    return _end_ids(generation.eos_token_id, config.text_config.eos_token_id)


def captioner(loaded: Loaded, layer: str, instruction: str | None = None) -> CaptionAdapter:
    """The caption follows the prompt: PaliGemma's task prefix (``caption en``) or Gemma 3's
    user turn with ``instruction`` (``Describe the image.``) and the image."""
    prompt = _prompt(loaded)
    text = instruction or (PALIGEMMA_CAPTION if _is_paligemma(loaded.model) else DEFAULT_INSTRUCTION)
    crops = _crops(prompt, loaded)
    if crops is not None:
        views = crop_views(prompt, loaded.model, layer, crops)
        scorer: GemmaCaptioner = CropCaptioner(
            loaded.name, loaded.model, loaded.tokenizer, loaded.image, layer, views.reshape,
            prefix=(), end_ids=_end_tokens(loaded), prompt=prompt, views=views, instruction=text,
        )
        return CaptionAdapter(scorer)
    reshape, rows = layout(prompt, loaded.model, layer)
    scorer = GemmaCaptioner(
        loaded.name, loaded.model, loaded.tokenizer, loaded.image, layer, reshape,
        prefix=prompt.ids(text), end_ids=_end_tokens(loaded), placeholders=rows, prompt=prompt,
    )
    return CaptionAdapter(scorer)


def answers(loaded: Loaded, layer: str) -> GenerativeVQAAdapter:
    """The question in the model's prompt (PaliGemma: ``answer en QUESTION``; Gemma 3: the user
    turn); y^c = log p(answer + end | prompt), the end being the token the model closes its
    answer with (Gemma 3's chat template: ``<end_of_turn>``)."""
    prompt = _prompt(loaded, PALIGEMMA_QUESTION if _is_paligemma(loaded.model) else "")
    ends = dict(end_ids=_end_tokens(loaded), end_id=_answer_end(prompt, _end_tokens(loaded)))
    common = dict(name=loaded.name, layer=layer, embedding_layer=None, prompt=prompt, **ends)
    crops = _crops(prompt, loaded)
    if crops is not None:
        views = crop_views(prompt, loaded.model, layer, crops)
        scorer: GemmaAnswerScorer = CropAnswerScorer(
            loaded.model, loaded.tokenizer, loaded.image, None, reshape=views.reshape, views=views, **common
        )
        return GenerativeVQAAdapter(scorer)
    reshape, rows = layout(prompt, loaded.model, layer)
    scorer = GemmaAnswerScorer(
        loaded.model, loaded.tokenizer, loaded.image, None, reshape=reshape, placeholders=rows, **common
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
