"""Tiny Qwen-VL checkpoints built offline: Qwen2-VL, Qwen2.5-VL (window attention) and Qwen3-VL
(deepstack), each with a 2-block vision tower (patch 4, merge 2), a 2-layer language model
(hidden 32), a byte-level BPE tokenizer with Qwen's special tokens, a Qwen-style chat template,
and the family's own image and video processors, saved with ``save_pretrained`` like a user's
checkpoint. Built once per test session.

The image processor's pixel budget (``max_pixels`` = 1024) makes every test image shrink: a
40x40 image becomes 32x32 (8x8 patches, 4x4 image tokens), 40x64 becomes 24x40 (6x10 patches,
3x5 tokens) and 64x40 becomes 40x24 (10x6, 5x3).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from vlm_fixtures import _ROOT, SENTENCES

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PATCH, MERGE, MAX_PIXELS = 4, 2, 1024
CLASSES = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration")
GRIDS = {"square": (8, 8), "wide": (6, 10), "tall": (10, 6)}
"""The vision tower's patch grid (h, w) of each test image shape (see the module docstring)."""


def qwen_tokenizer():
    """Byte-level BPE (no prefix space, as Qwen's) with Qwen's special tokens; ``image_token``
    and ``video_token`` named for the processors."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = sorted(set("".join(SENTENCES)) | set(" .?:\n") | set("userassistant"))
    trainer = trainers.BpeTrainer(vocab_size=len(SPECIALS) + len(alphabet) + 60, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator([*SENTENCES, "user\n", "assistant\n"] * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def _configs(architecture: str, ids: dict[str, int], vocab: int):
    import transformers

    text = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    common = dict(depth=2, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2)
    if architecture == "Qwen2VLForConditionalGeneration":
        vision = dict(common, embed_dim=32, hidden_size=32, mlp_ratio=2)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        return transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **tokens)
    if architecture == "Qwen2_5_VLForConditionalGeneration":
        # window 16 px = 2x2 image tokens per window; block 0 windowed, block 1 full attention
        vision = dict(common, hidden_size=32, intermediate_size=64, out_hidden_size=32, window_size=16, fullatt_block_indexes=[1])
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        return transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **tokens)
    vision = dict(common, hidden_size=32, intermediate_size=64, out_hidden_size=32, num_position_embeddings=16, deepstack_visual_indexes=[0])
    text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True})
    return transformers.Qwen3VLConfig(vision_config=vision, text_config=text, **tokens)


def _processor(architecture: str, tokenizer, template: bool):
    import transformers

    sizes = dict(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2, size={"shortest_edge": 64, "longest_edge": MAX_PIXELS})
    image_processor = transformers.Qwen2VLImageProcessor(**sizes)
    chat_template = TEMPLATE if template else None
    if architecture == "Qwen3VLForConditionalGeneration":
        video = transformers.Qwen3VLVideoProcessor(**sizes)
        return transformers.Qwen3VLProcessor(image_processor, tokenizer, video, chat_template=chat_template)
    video = transformers.Qwen2VLVideoProcessor(**sizes)
    processor_class = transformers.Qwen2VLProcessor if architecture.startswith("Qwen2VL") else transformers.Qwen2_5_VLProcessor
    return processor_class(image_processor, tokenizer, video, chat_template=chat_template)


def build_qwen(folder: Path, architecture: str, *, template: bool = True) -> None:
    """A random tiny ``architecture`` model and its processor in ``folder``; ``template=False``
    saves no chat template (the adapter must refuse it)."""
    import transformers

    tokenizer = qwen_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    config = _configs(architecture, ids, len(tokenizer))
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():  # random tiny models favour special tokens: keep generated text in words
        head = model.lm_head.weight
        head.mul_(8.0)
        for token in SPECIALS:
            if token != "<|im_end|>":
                head[ids[token]] = 0.0
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(folder)
    _processor(architecture, tokenizer, template).save_pretrained(folder)


@functools.cache
def saved_qwen(architecture: str = "Qwen2VLForConditionalGeneration", variant: str = "default") -> Path:
    """The folder of a tiny ``architecture`` checkpoint: ``default`` or ``no-template``."""
    folder = _ROOT / f"{architecture}-{variant}"
    build_qwen(folder, architecture, template=variant != "no-template")
    return folder
