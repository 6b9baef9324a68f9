"""``mmcam.load("hf:ID_OR_PATH")``: a transformers checkpoint folder -> a caption or VQA adapter.

The folder is what ``save_pretrained`` writes for the model and for its processor (or image
processor and tokenizer). Nothing is downloaded: a model id is looked up in the local Hugging
Face cache only. ``config.architectures`` picks the family below; each family knows its default
layer, the tokens that precede the text and how the logits line up with the words.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core import resolve_layer
from ...errors import InputError
from ..captioning import CaptionAdapter
from ..vqa import VQAAdapter
from .captioning import TransformersCaptioner
from .encoders import TOKEN_ENCODERS, as_token_encoder
from .layout import PatchTokens
from .preprocess import ImageSettings
from .vqa import BlipAnswerScorer, GenerativeVQAAdapter, ViltScorer


@dataclass(frozen=True)
class Family:
    """How to explain one transformers class: its task, its default layer (a dotted name; the
    last block of the list named, for ``.-1``) and the function that builds its adapter."""

    task: str
    default_layer: str | Callable[[nn.Module], str]
    build: Callable[..., Any]
    vqa: Callable[..., Any] | None = None  # a VLM's VQA adapter, asked for with ?task=vqa


@dataclass(frozen=True)
class Loaded:
    """A checkpoint read from its folder: the model (eval mode), tokenizer, image settings."""

    name: str
    model: nn.Module
    tokenizer: Any
    image: ImageSettings | None  # None: a VLM whose module sizes images from its processor
    folder: Path | None = None


def load_hf(
    id_or_path: str,
    *,
    layer: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> CaptionAdapter | VQAAdapter:
    """The adapter for the transformers checkpoint ``id_or_path`` (a local folder or a model id
    already in the local Hugging Face cache), hooking ``layer`` or the family's default.
    ``FOLDER?task=caption|vqa`` picks the task of a model that does both (a VLM: captioning by
    default); for any other model it must name the model's own task. A VLM captioner also takes
    ``instruction=TEXT`` (URL-encoded), the user turn's text before the caption.

    How the weights are loaded (keywords, or the same names in the query, e.g.
    ``FOLDER?dtype=bfloat16&device_map=auto``): ``dtype`` float32, bfloat16, float16 or auto
    (the checkpoint's); ``device_map`` as transformers takes it (``"auto"``, a device, or a dict
    of module name -> device, ``"cpu"`` or ``"disk"``; needs the accelerate package) and
    ``offload_folder`` for the modules it offloads to disk."""
    id_or_path, _, query = id_or_path.partition("?")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    task = options.pop("task", None)
    weights = {name: options.pop(name) for name in LOADING_OPTIONS if name in options}
    if task not in (None, "caption", "vqa") or set(options) - {"instruction"}:
        raise InputError(
            f"hf:{id_or_path}?{query}: the options are task=caption|vqa, {'=, '.join(LOADING_OPTIONS)}= "
            "and, for a VLM captioner, instruction=TEXT"
        )
    given = {"dtype": dtype, "device_map": device_map, "offload_folder": offload_folder}
    weights.update({name: value for name, value in given.items() if value is not None})
    folder = resolve_folder(id_or_path)
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"cannot read {folder / 'config.json'}: {_first_line(error)}") from None
    architecture = next(iter(getattr(config, "architectures", None) or []), None)
    family = FAMILIES.get(architecture or "")
    if family is None:
        raise InputError(
            f"hf:{id_or_path} is a {architecture or config.model_type} model, which mmcam does not "
            f"explain; supported: {', '.join(FAMILIES)}"
        )
    with _quiet_loading():
        model = _load_model(getattr(transformers, architecture), folder, config, _pretrained_options(weights))
        tokenizer = _load_part(transformers.AutoTokenizer, folder, "tokenizer", TOKENIZER_FILES)
        image_processor = _load_part(transformers.AutoImageProcessor, folder, "image processor", IMAGE_PROCESSOR_FILES)
    vision = getattr(config, "vision_config", None) or getattr(config, "encoder", None) or config
    try:
        image = ImageSettings.from_processor(image_processor, getattr(vision, "image_size", None))
    except InputError:
        if architecture not in VLM_MODULES:
            raise
        image = None  # a VLM module sizes its images from the processor itself
    loaded = Loaded(f"hf:{id_or_path}", model, tokenizer, image, folder)
    default = family.default_layer
    chosen = layer or (default(model) if callable(default) else _default_layer(model, default))
    resolve_layer(model, chosen)  # an unknown layer fails here, with candidates
    if options and (family.vqa is None or task == "vqa"):
        raise InputError(f"hf:{id_or_path}: instruction= is an option of a VLM captioner only")
    if task == "vqa" and family.vqa is not None:
        return family.vqa(loaded, chosen)
    if task not in (None, family.task):
        raise InputError(f"hf:{id_or_path} is a {family.task} model ({architecture}); use 'mmcam {family.task}'")
    return family.build(loaded, chosen, **options)


def resolve_folder(id_or_path: str) -> Path:
    """The local folder of ``id_or_path``: the folder itself, or the model id's snapshot in the
    local Hugging Face cache. Anything else is an :class:`InputError`, and nothing is fetched."""
    path = Path(id_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(
                f"{path} has no config.json; save the model there with model.save_pretrained(folder) "
                "and its processor with processor.save_pretrained(folder)"
            )
        return path
    if path.exists():
        raise InputError(f"hf:{id_or_path} is a file; give the folder that save_pretrained wrote")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(str(id_or_path), local_files_only=True))
    except Exception:  # not cached, or not a valid model id: either way it is not here
        snapshot = None
    if snapshot is None or not (snapshot / "config.json").is_file():
        raise InputError(
            f"model {id_or_path!r} is not available offline: it is neither a local folder nor in the "
            "local Hugging Face cache, and mmcam downloads nothing; on a machine with internet, save it "
            "with model.save_pretrained(FOLDER) and processor.save_pretrained(FOLDER), then pass "
            "hf:/path/to/FOLDER"
        )
    return snapshot


LOADING_OPTIONS = ("dtype", "device_map", "offload_folder")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "auto": "auto",
}


def _pretrained_options(options: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` keywords for the loading options, checked: a dtype by name or
    torch.dtype; a device map needs accelerate (transformers' own error names neither)."""
    chosen = dict(options)
    dtype = chosen.get("dtype")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        if str(dtype) not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
        chosen["dtype"] = DTYPES[str(dtype)]
    if chosen.get("device_map") is not None and importlib.util.find_spec("accelerate") is None:
        raise InputError("device_map needs the accelerate package: pip install accelerate")
    if chosen.get("offload_folder") is not None:
        chosen["offload_folder"] = str(chosen["offload_folder"])
    return chosen


def _load_model(model_class: type, folder: Path, config: Any, options: dict[str, Any] | None = None) -> nn.Module:
    encoder = getattr(config, "encoder", None)
    convolutional = getattr(encoder, "model_type", None) in TOKEN_ENCODERS
    if convolutional and not hasattr(encoder, "hidden_size"):
        encoder.hidden_size = encoder.hidden_sizes[-1]  # what VisionEncoderDecoderModel reads
    try:
        model = model_class.from_pretrained(folder, config=config, local_files_only=True, **(options or {}))
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot load the model in {folder}: {_first_line(error)}") from None
    if convolutional:
        model.encoder = as_token_encoder(model.encoder)
    return model.eval()


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "image_processor_config.json")


def _load_part(auto_class: Any, folder: Path, what: str, files: tuple[str, ...]) -> Any:
    # transformers 5 builds an empty tokenizer (special tokens only) from a folder without
    # vocabulary files, so their presence is checked first
    if not any((folder / name).is_file() for name in files):
        raise InputError(
            f"{folder} has no {what} ({' / '.join(files)}); save it into the same folder with "
            "processor.save_pretrained(folder)"
        )
    try:
        return auto_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read the {what} in {folder}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No weight-loading progress bars (they would interleave with the CLI's output)."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _default_layer(model: nn.Module, spec: str) -> str:
    """``spec`` with a trailing ``.-1`` resolved to the last block's index, so records name it;
    alternatives separated by ``|`` are tried in order."""
    for candidate in spec.split("|"):
        container, _, index = candidate.rpartition(".")
        if index != "-1":
            with contextlib.suppress(InputError):
                return resolve_layer(model, candidate)[0]
            continue
        with contextlib.suppress(InputError):
            blocks = resolve_layer(model, container)[1]
            if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks):
                return f"{container}.{len(blocks) - 1}"
    raise InputError(f"no layer {spec!r} in {type(model).__name__}; pass --layer with a dotted name")


def _end_ids(*values: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for value in values:
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return tuple(ids)


def _first_id(what: str, *values: Any) -> int:
    for value in values:
        if value is not None:
            return int(value)
    raise InputError(f"the checkpoint's config sets no {what}; set it in config.json / generation_config.json")


def _captioner(
    loaded: Loaded, layer: str, prefix: tuple[int, ...], end_ids: tuple[int, ...], text_argument: str = "input_ids"
) -> CaptionAdapter:
    scorer = TransformersCaptioner(
        loaded.name,
        loaded.model,
        loaded.tokenizer,
        loaded.image,
        layer,
        PatchTokens(loaded.image.size),
        prefix=prefix,
        end_ids=end_ids,
        text_argument=text_argument,
    )
    return CaptionAdapter(scorer)


def _blip_captioner(loaded: Loaded, layer: str) -> CaptionAdapter:
    """BLIP: the caption follows the text decoder's bos; logits row t scores caption token t;
    ``generate`` starts with the bos and stops at [SEP]."""
    text = loaded.model.config.text_config
    return _captioner(loaded, layer, (_first_id("text_config.bos_token_id", text.bos_token_id),), _end_ids(text.sep_token_id))


def _git_captioner(loaded: Loaded, layer: str) -> CaptionAdapter:
    """GIT: the caption follows [CLS] (the bos); the logits begin with one row per image token."""
    config, generation = loaded.model.config, loaded.model.generation_config
    bos = _first_id("bos_token_id", generation.bos_token_id, config.bos_token_id)
    return _captioner(loaded, layer, (bos,), _end_ids(generation.eos_token_id, config.eos_token_id))


def _blip2_captioner(loaded: Loaded, layer: str) -> CaptionAdapter:
    """BLIP-2: the language model reads one placeholder per Q-Former query token (their
    embeddings are replaced by the projected queries), its bos, then the caption; ``generate``
    returns all of them."""
    config, generation = loaded.model.config, loaded.model.generation_config
    text = config.text_config
    image = _first_id("image_token_id", getattr(config, "image_token_id", None), getattr(config, "image_token_index", None))
    bos = _first_id("text_config.bos_token_id", text.bos_token_id)
    ends = _end_ids(generation.eos_token_id, text.eos_token_id)
    return _captioner(loaded, layer, (image,) * config.num_query_tokens + (bos,), ends)


def _encoder_decoder_captioner(loaded: Loaded, layer: str) -> CaptionAdapter:
    """VisionEncoderDecoderModel: the decoder reads its start token, then the caption."""
    config, generation = loaded.model.config, loaded.model.generation_config
    start = _first_id("decoder_start_token_id", generation.decoder_start_token_id, config.decoder_start_token_id)
    ends = _end_ids(generation.eos_token_id, config.eos_token_id, config.decoder.eos_token_id)
    return _captioner(loaded, layer, (start,), ends, text_argument="decoder_input_ids")


def _vilt_answers(loaded: Loaded, layer: str) -> VQAAdapter:
    config = loaded.model.config
    answers = [str(config.id2label[index]) for index in range(config.num_labels)]
    scorer = ViltScorer(
        loaded.model, loaded.tokenizer, loaded.image, config.max_position_embeddings,
        name=loaded.name, answers=answers, layer=layer, reshape=PatchTokens(loaded.image.size),
    )
    return VQAAdapter(scorer)


def _blip_answers(loaded: Loaded, layer: str) -> GenerativeVQAAdapter:
    text = loaded.model.config.text_config
    scorer = BlipAnswerScorer(
        loaded.model, loaded.tokenizer, loaded.image, text.max_position_embeddings,
        name=loaded.name, layer=layer, reshape=PatchTokens(loaded.image.size),
        bos_id=_first_id("text_config.bos_token_id", text.bos_token_id),
        end_id=_first_id("text_config.sep_token_id", text.sep_token_id),
    )
    return GenerativeVQAAdapter(scorer)


def _llava_prompt(loaded: Loaded) -> Any:
    from .llava import LlavaPrompt

    return LlavaPrompt(processor_of(loaded), loaded.image, loaded.name)


def _llava_captioner(loaded: Loaded, layer: str, instruction: str | None = None) -> CaptionAdapter:
    """LLaVA: the caption follows the chat-template prompt (``instruction`` and the image)."""
    from .llava import DEFAULT_INSTRUCTION, LlavaCaptioner, image_rows, layer_layout

    prompt = _llava_prompt(loaded)
    config, generation = loaded.model.config, loaded.model.generation_config
    rows = image_rows(prompt, loaded.model)
    scorer = LlavaCaptioner(
        loaded.name, loaded.model, loaded.tokenizer, loaded.image, layer, layer_layout(prompt, loaded.model, layer, rows),
        prefix=prompt.ids(instruction or DEFAULT_INSTRUCTION),
        end_ids=_end_ids(generation.eos_token_id, config.text_config.eos_token_id), placeholders=rows,
    )
    return CaptionAdapter(scorer, default_method=LLAVA_CAPTION_METHOD)


def _llava_answers(loaded: Loaded, layer: str) -> GenerativeVQAAdapter:
    """LLaVA VQA: the question in the chat-template prompt; y^c = log p(answer + end | prompt)."""
    from .llava import LlavaAnswerScorer, image_rows, layer_layout

    prompt = _llava_prompt(loaded)
    config, generation = loaded.model.config, loaded.model.generation_config
    rows = image_rows(prompt, loaded.model)
    scorer = LlavaAnswerScorer(
        loaded.model, loaded.tokenizer, loaded.image, None, name=loaded.name, layer=layer,
        embedding_layer=None, reshape=layer_layout(prompt, loaded.model, layer, rows), prompt=prompt, placeholders=rows,
        end_id=_first_id("eos_token_id", *_end_ids(generation.eos_token_id, config.text_config.eos_token_id)[:1]),
    )
    return GenerativeVQAAdapter(scorer, default_method=LLAVA_VQA_METHOD)


# LLaVA's defaults, chosen by measurement on shapes-llava (docs/RESULTS.md, "shapes-llava
# pointing"): the projector's output (the image tokens the language model reads) points best for
# HiResCAM and its Guided variant, the best maps that pass the randomisation check; Guided
# HiResCAM for caption words (77.4% of words on the stage-3 weights, 83.5% before; Grad-CAM at
# the tower block 37.4%), HiResCAM for answers (93.7%, 96.3% before). LayerCAM points better
# (80.3% / 97.3%) but keeps 0.55-0.64 of its map after the output layer is re-initialised.
LLAVA_CAPTION_METHOD, LLAVA_VQA_METHOD = "guided_hirescam", "hirescam"


def _llava_layer(model: nn.Module) -> str:
    from .llava import PROJECTOR, tower_layer

    with contextlib.suppress(AttributeError):
        model.get_submodule(PROJECTOR)
        return PROJECTOR
    return tower_layer(model)


def processor_of(loaded: Loaded) -> Any:
    """The checkpoint's full processor (tokenizer, image processor, chat template), offline."""
    import transformers

    with _quiet_loading():
        return _load_part(transformers.AutoProcessor, loaded.folder, "processor", IMAGE_PROCESSOR_FILES)


def _vlm_family(module: str) -> Family:
    """A decoder-only VLM family whose adapters live in ``mmcam.adapters.hf.<module>``: that
    module defines ``default_layer(model)``, ``captioner(loaded, layer, instruction=None)`` and
    ``answers(loaded, layer)``; it is imported only when such a checkpoint is loaded."""

    def part(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            import importlib

            return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args, **kwargs)

        return call

    return Family("caption", part("default_layer"), part("captioner"), vqa=part("answers"))


_CNN_OR_VIT = "encoder.encoder.stages.-1|encoder.layers.-1|encoder.encoder.layers.-1|encoder.encoder.layer.-1"

FAMILIES: dict[str, Family] = {
    "BlipForConditionalGeneration": Family("caption", "vision_model.encoder.layers.-1", _blip_captioner),
    "GitForCausalLM": Family("caption", "git.image_encoder.vision_model.encoder.layers.-1", _git_captioner),
    "Blip2ForConditionalGeneration": Family("caption", "vision_model.encoder.layers.-1", _blip2_captioner),
    "VisionEncoderDecoderModel": Family("caption", _CNN_OR_VIT, _encoder_decoder_captioner),
    "BlipForQuestionAnswering": Family("vqa", "vision_model.encoder.layers.-1", _blip_answers),
    "ViltForQuestionAnswering": Family("vqa", "vilt.embeddings.patch_embeddings.projection", _vilt_answers),
    "LlavaForConditionalGeneration": Family("caption", _llava_layer, _llava_captioner, vqa=_llava_answers),
}
# Decoder-only VLM families, one module each (issue 12)
VLM_MODULES = {
    "LlavaNextForConditionalGeneration": "llava_next",
    "LlavaOnevisionForConditionalGeneration": "llava_next",
    "Qwen2VLForConditionalGeneration": "qwen_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen_vl",
    "Qwen3VLForConditionalGeneration": "qwen_vl",
    "Idefics3ForConditionalGeneration": "idefics",
    "SmolVLMForConditionalGeneration": "idefics",
    "PaliGemmaForConditionalGeneration": "paligemma",
    "Gemma3ForConditionalGeneration": "paligemma",
    "InstructBlipForConditionalGeneration": "instructblip",
    "Florence2ForConditionalGeneration": "florence",
}
FAMILIES.update(
    {
        architecture: _vlm_family(module)
        for architecture, module in VLM_MODULES.items()
        if importlib.util.find_spec(f"{__package__}.{module}") is not None
    }
)
