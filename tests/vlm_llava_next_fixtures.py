"""Tiny LLaVA-NeXT and LLaVA-OneVision checkpoints built offline, saved with ``save_pretrained``
like a user's checkpoint: a vision tower of 32x32 tiles with 8-pixel patches (a 4x4 patch grid
per tile), a Llama language model (hidden 32, 2 layers), the byte-level BPE tokenizer of
``vlm_fixtures`` and small pinpoints, so that a 40x40 image, a wide 40x64 and a tall 64x40 get
different tile grids and unpadding. Built once per test session.

- ``next``: LLaVA-NeXT, CLIP tower (CLS dropped for the language model), pinpoints 32x32,
  32x64, 64x32 (the square image gets one tile, the wide one 1x2 tiles unpadded to 4x6 patches,
  the tall one 2x1 unpadded to 6x4), LLaVA-1.5-style chat template.
- ``onevision``: LLaVA-OneVision, SigLIP tower (no CLS), pinpoints up to 64x64 (2x2 tiles for
  all three images), ``anyres_max_2`` (the language model reads the unpadded grid bilinearly
  shrunk), its own ChatML-style template.
- ``next-no-template``: ``next`` without a chat template (the adapter must refuse it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlm_fixtures import _ROOT, TEMPLATE, llava_tokenizer, save_words_first

TILE, PATCH = 32, 8
NEXT_PINPOINTS = [[32, 32], [32, 64], [64, 32]]
ONEVISION_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
ONEVISION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _text_config(tokenizer):
    from transformers import LlamaConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<pad>", "<s>", "</s>")}
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )


def build_llava_next(folder: Path, *, template: bool = True) -> None:
    """A random tiny LLaVA-NeXT and its processor in ``folder``."""
    from transformers import (
        CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = llava_tokenizer()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=NEXT_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        chat_template=TEMPLATE if template else None, num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
        patch_size=PATCH, projection_dim=32,
    )
    config = LlavaNextConfig(
        vision_config=vision, text_config=_text_config(tokenizer), image_token_id=tokenizer.image_token_id,
        image_grid_pinpoints=NEXT_PINPOINTS, vision_feature_select_strategy="default", vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    save_words_first(LlavaNextForConditionalGeneration(config).eval(), tokenizer, folder, processor)


def build_llava_onevision(folder: Path) -> None:
    """A random tiny LLaVA-OneVision and its processor in ``folder``."""
    from transformers import (
        LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor, SiglipVisionConfig,
    )

    tokenizer = llava_tokenizer()
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": TILE, "width": TILE}, image_grid_pinpoints=ONEVISION_PINPOINTS,
    )
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full",
        chat_template=ONEVISION_TEMPLATE, vision_aspect_ratio="anyres_max_2",
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
        patch_size=PATCH,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=_text_config(tokenizer), image_token_id=tokenizer.image_token_id,
        image_grid_pinpoints=ONEVISION_PINPOINTS, vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_2", projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    save_words_first(LlavaOnevisionForConditionalGeneration(config).eval(), tokenizer, folder, processor)


@functools.cache
def saved_llava_next(variant: str = "next") -> Path:
    """The folder of a tiny checkpoint: ``next``, ``onevision`` or ``next-no-template``."""
    folder = _ROOT / f"llava-{variant}"
    if variant == "onevision":
        build_llava_onevision(folder)
    else:
        build_llava_next(folder, template=variant != "next-no-template")
    return folder


@functools.cache
def sized_image(height: int, width: int) -> Path:
    """A saved RGB test image (H, W): a red block top left, a blue one bottom right, on noisy grey."""
    rng = np.random.default_rng(height * 1000 + width)
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[: height // 2, : width // 2] = (220, 30, 30)
    pixels[height // 2 :, width // 2 :] = (30, 30, 220)
    pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    path = _ROOT / f"image-{height}x{width}.png"
    Image.fromarray(pixels).save(path)
    return path
