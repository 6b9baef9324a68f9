"""Florence-2 (``Florence2ForConditionalGeneration``): captions from an encoder-decoder VLM.

A DaViT vision tower (convolutional stages, each a patch convolution then blocks on a
(B, C, h, w) map) encodes the image; the projector turns its last map into image tokens: one
mean token (the average over all positions), then the h*w positions row by row. The BART
encoder reads ``image tokens + <s> + task prompt + </s>`` (the checkpoint's processor writes it:
a task token such as ``<CAPTION>`` becomes its prompt text), the decoder reads ``</s> <s>``
(decoder start, then the token ``generate`` forces first) and the caption; decoder row
``len(prefix) - 1 + t`` scores caption token t, as ``generate`` scores it.

Where the map is taken (``--layer``), each on the last stage's (h, w) grid unless said:

- ``model.vision_tower.blocks.S.J`` (the default: the last stage's last block), a (B, C, h, w)
  map; any stage's block or patch convolution (``model.vision_tower.convs.S``) works alike, on
  that stage's own grid;
- ``model.multi_modal_projector``: the image tokens the language model reads, the mean token
  dropped (it has no place in the image; its share of a word's gradient is not mapped);
- ``model.language_model.encoder.layers.K``: the BART encoder's hidden states at the image
  token positions (the mean token and the prompt's positions are not mapped).

The grids come from the vision config's patch convolutions (kernel, stride, padding) at the
processor's input size, checked against the processor's ``image_seq_length``. Images are
resized whole to that size (the processor squashes them too), so a map covers the whole
original image. Florence-2's processor has no question-answering task, so VQA is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ...core import TokenGrid, resolve_layer
from ...core.layout import Layout
from ...errors import InputError
from ..captioning import CaptionAdapter
from .prompted import PromptedCaptioner

if TYPE_CHECKING:
    from .loading import Loaded

DEFAULT_TASK = "<CAPTION>"
TOWER = "model.vision_tower"
PROJECTOR = "model.multi_modal_projector"
ENCODER_LAYERS = "model.language_model.encoder.layers"


def default_layer(model: nn.Module) -> str:
    """The vision tower's last block: the (B, C, h, w) map the projector reads."""
    blocks = model.get_submodule(f"{TOWER}.blocks")
    return f"{TOWER}.blocks.{len(blocks) - 1}.{len(blocks[-1]) - 1}"


def stage_grids(vision: Any, size: tuple[int, int]) -> list[tuple[int, int]]:
    """(h, w) of each DaViT stage's map for an input of ``size`` (H, W): every stage's patch
    convolution maps a side s to (s + 2 * padding - kernel) // stride + 1."""
    height, width = size
    grids = []
    for kernel, stride, padding in zip(vision.patch_size, vision.patch_stride, vision.patch_padding, strict=True):
        height = (height + 2 * padding - kernel) // stride + 1
        width = (width + 2 * padding - kernel) // stride + 1
        grids.append((height, width))
    return grids


@dataclass(frozen=True)
class LeadingImageTokens:
    """Layout of hidden states (B, L, C) whose positions ``skip .. skip + h*w`` are the image's
    tokens on the (h, w) ``grid``, row by row (the BART encoder's: the mean token, the patch
    tokens, then the prompt); the other positions are not mapped."""

    grid: tuple[int, int]
    skip: int = 1

    def _layout(self) -> Layout:
        return Layout("tokens", self.grid, self.skip)

    @property
    def end(self) -> int:
        """One past the last image position."""
        return self.skip + self.grid[0] * self.grid[1]

    def __call__(self, states: Tensor) -> Tensor:
        """(B, L, C) -> (B, C, h, w)."""
        return self._layout()(states[:, : self.end])

    def gradients(self, gradients: Tensor) -> Tensor:
        """(T, B, L, C) -> (B, T, C, h, w)."""
        return self._layout().gradients(gradients[:, :, : self.end])

    def describe(self) -> str:
        return f"image tokens {self.grid[0]}x{self.grid[1]} at positions {self.skip}-{self.end - 1}, the rest not mapped"


def layer_layout(loaded: Loaded, layer: str) -> Layout | TokenGrid | LeadingImageTokens:
    """How ``layer``'s output lies on a grid of the image (see the module docstring), or an
    InputError naming the choices."""
    model = loaded.model
    name, module = resolve_layer(model, layer)
    tower = model.get_submodule(TOWER)
    grids = stage_grids(model.config.vision_config, loaded.image.size)
    for stage, (conv, blocks) in enumerate(zip(tower.convs, tower.blocks, strict=True)):
        if module is conv or any(module is block for block in blocks):
            return Layout("NCHW", grids[stage])
    if module is model.get_submodule(PROJECTOR):
        return TokenGrid(drop=1, grid=grids[-1])
    if any(module is encoder_layer for encoder_layer in model.get_submodule(ENCODER_LAYERS)):
        return LeadingImageTokens(grids[-1])
    raise InputError(
        f"layer {name!r} has no layout on the image mmcam knows; choose a vision tower stage "
        f"({TOWER}.convs.S or {TOWER}.blocks.S.J, default {default_layer(model)}), the projector ({PROJECTOR}) "
        f"or a language-model encoder layer ({ENCODER_LAYERS}.K)"
    )


def _processor(loaded: Loaded) -> Any:
    """The checkpoint's processor, checked against the model: its image token and count."""
    from .loading import processor_of

    processor = processor_of(loaded)
    if loaded.image is None:
        raise InputError(
            f"{loaded.name}'s image processor names no input size; save it with size={{'height': H, 'width': W}}"
        )
    height, width = stage_grids(loaded.model.config.vision_config, loaded.image.size)[-1]
    count = getattr(processor, "num_image_tokens", None)
    if count != 1 + height * width:
        raise InputError(
            f"{loaded.name}'s image processor sets image_seq_length={count}, but a {loaded.image.size[0]}x"
            f"{loaded.image.size[1]} input gives the language model 1 + {height}x{width} = {1 + height * width} image tokens"
        )
    if getattr(processor, "image_token_id", None) != loaded.model.config.image_token_id:
        raise InputError(f"{loaded.name}'s tokenizer image token is not the model's image_token_id")
    return processor


def caption_tasks(processor: Any) -> list[str]:
    """The processor's task tokens that take no input and answer in plain text (captions, OCR)."""
    kinds = getattr(processor, "tasks_answer_post_processing_type", {})
    return [task for task in getattr(processor, "task_prompts_without_inputs", {}) if kinds.get(task) == "pure_text"]


def prompt_ids(processor: Any, task: str, image_size: tuple[int, int]) -> tuple[int, ...]:
    """The encoder's ids for ``task``, as the processor writes them for an image: the image
    placeholders, ``<s>``, the task's prompt text, ``</s>``."""
    from PIL import Image

    tasks = caption_tasks(processor)
    if task not in tasks:
        raise InputError(
            f"Florence-2 task {task!r} is not a caption task of this processor; choose one of: {', '.join(tasks)}"
        )
    height, width = image_size
    return tuple(processor(images=Image.new("RGB", (width, height)), text=task)["input_ids"][0])


def captioner(loaded: Loaded, layer: str, instruction: str | None = None) -> CaptionAdapter:
    """Florence-2 captions for a task token (``instruction``, default :data:`DEFAULT_TASK`;
    ``<DETAILED_CAPTION>``, ``<MORE_DETAILED_CAPTION>`` and ``<OCR>`` also answer in text)."""
    from .loading import _end_ids, _first_id

    processor = _processor(loaded)
    config, generation = loaded.model.config, loaded.model.generation_config
    text = config.text_config
    start = _first_id("decoder_start_token_id", generation.decoder_start_token_id, text.decoder_start_token_id)
    forced = generation.forced_bos_token_id if generation.forced_bos_token_id is not None else text.forced_bos_token_id
    prompt = prompt_ids(processor, instruction or DEFAULT_TASK, loaded.image.size)
    layout = layer_layout(loaded, layer)
    if isinstance(layout, LeadingImageTokens) and prompt[: layout.end] != (config.image_token_id,) * layout.end:
        raise InputError(
            f"{loaded.name}'s processor does not put the image tokens first in the prompt; choose a vision tower layer"
        )
    scorer = PromptedCaptioner(
        loaded.name, loaded.model, loaded.tokenizer, loaded.image, layer, layout,
        prefix=(start,) if forced is None else (start, int(forced)),
        end_ids=_end_ids(generation.eos_token_id, text.eos_token_id), text_argument="decoder_input_ids", prompt_ids=prompt,
    )
    return CaptionAdapter(scorer)


def answers(loaded: Loaded, layer: str) -> Any:
    """Refused: Florence-2's processor has no question-answering task prompt."""
    tasks = ", ".join(caption_tasks(_processor(loaded))) or "none"
    raise InputError(
        f"{loaded.name}: Florence-2's processor has no question-answering task (its text tasks: {tasks}); "
        "explain its captions with 'mmcam caption'"
    )
