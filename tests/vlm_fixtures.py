"""Tiny LLaVA checkpoints built offline: a CLIP vision tower (hidden 32, 2 layers, 32x32 input,
patch 8: a 4x4 grid), a Llama language model (hidden 32, 2 layers), a byte-level BPE tokenizer
with ``<image>`` as a special token and a LLaVA-1.5-style chat template, saved with
``save_pretrained`` like a user's checkpoint. Built once per test session.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
SENTENCES = [
    "USER: Describe the image. ASSISTANT: a red circle", "a blue square", "a green triangle",
    "a red circle and a blue square", "what color is the circle?", "what shape is on the left?",
    "is there a red square?", "yes", "no", "Say what you see.",
]
TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SIZE, PATCH = 32, 8

_ROOT = Path(tempfile.mkdtemp(prefix="mmcam-vlm-"))
atexit.register(shutil.rmtree, _ROOT, True)


def llava_tokenizer():
    """Byte-level BPE trained on a few sentences (prefix space added, so a caption's first word
    reads as it does after the prompt), ``<image>`` an added special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = sorted(set("".join(SENTENCES)) | set(" .?:\n"))
    trainer = trainers.BpeTrainer(vocab_size=len(SPECIALS) + len(alphabet) + 60, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_llava(folder: Path, *, template: bool = True, strategy: str = "default") -> None:
    """A random tiny LLaVA and its processor in ``folder``; ``template=False`` saves no chat
    template (the adapter must refuse it)."""
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
    )

    tokenizer = llava_tokenizer()
    vocab = len(tokenizer)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}, do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy=strategy, chat_template=TEMPLATE if template else None,
        num_additional_image_tokens=1,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
        patch_size=PATCH, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=ids["<image>"], projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy, vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    save_words_first(LlavaForConditionalGeneration(config).eval(), tokenizer, folder, processor)


def save_words_first(model, tokenizer, folder: Path, processor) -> None:
    """Save a random tiny model (with SPECIALS) and its processor, its generated text kept in
    words: random tiny models favour special tokens, so the head is sharpened and the pad, bos
    and image tokens never win."""
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    with torch.no_grad():
        head = model.lm_head.weight
        head.mul_(8.0)
        for token in ("<pad>", "<s>", "<image>"):
            head[ids[token]] = 0.0
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.bos_token_id = ids["<s>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@functools.cache
def saved_llava(variant: str = "default") -> Path:
    """The folder of a tiny LLaVA: ``default``, ``full`` (CLS kept for the language model) or
    ``no-template``."""
    folder = _ROOT / variant
    build_llava(folder, template=variant != "no-template", strategy="full" if variant == "full" else "default")
    return folder


SHAPES = {"square": (40, 40), "wide": (40, 64), "tall": (64, 40)}


@functools.cache
def llava_image(shape: str = "wide") -> Path:
    """A saved RGB test image (H, W) of ``SHAPES[shape]``: coloured blocks on grey."""
    height, width = SHAPES[shape]
    rng = np.random.default_rng(len(shape))
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[: height // 2, : width // 2] = (220, 30, 30)
    pixels[height // 2 :, width // 2 :] = (30, 30, 220)
    pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    path = _ROOT / f"image-{shape}.png"
    Image.fromarray(pixels).save(path)
    return path
