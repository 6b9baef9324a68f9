"""Tiny Florence-2 checkpoints built offline: a two-stage DaViT vision tower (embed 16 and 32,
one block each, strides 4 and 2: a 32x32 input gives 8x8 then a 4x4 map), the projector (a
mean token + 16 patch tokens: ``image_seq_length`` 17), a BART language model (d_model 32, one
encoder and one decoder layer) and a byte-level BPE tokenizer with ``<image>`` as its image
token; BART's generation settings (decoder start ``</s>``, forced ``<s>``). Saved with
``save_pretrained`` like a user's checkpoint; built once per test session.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from vlm_fixtures import _ROOT, SENTENCES

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]  # BART's ids 0-3, then the image token
TASK_WORDS = ["What does the image describe?", "Describe in detail what is shown in the image."]
SIZE = 32
GRID = (4, 4)


def florence_tokenizer():
    """Byte-level BPE trained on a few sentences and the task prompts; ``<image>`` is the
    tokenizer's named image token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=len(SPECIALS) + 100, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator((SENTENCES + TASK_WORDS) * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_florence(folder: Path) -> None:
    """A random tiny Florence-2 and its processor in ``folder``."""
    from transformers import (
        BartConfig, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor,
        Florence2VisionConfig,
    )

    tokenizer = florence_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    image_processor = CLIPImageProcessor(
        size={"height": SIZE, "width": SIZE}, do_center_crop=False, image_seq_length=1 + GRID[0] * GRID[1],
    )
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    vision = Florence2VisionConfig(
        depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1), patch_prenorm=(False, True),
        embed_dim=(16, 32), num_heads=(1, 2), num_groups=(1, 2), window_size=2, drop_path_rate=0.0,
        projection_dim=32, max_position_embeddings=16,
    )
    text = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        bos_token_id=ids["<s>"], pad_token_id=ids["<pad>"], eos_token_id=ids["</s>"],
        decoder_start_token_id=ids["</s>"], forced_bos_token_id=ids["<s>"], forced_eos_token_id=ids["</s>"],
    )
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=ids["<image>"])
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # a sharper head (tied to the embeddings, which BART's layer norm rescales),
        head = model.lm_head.weight  # and generated text in words, not special tokens
        head.mul_(8.0)
        for token in ("<s>", "<pad>", "<unk>", "<image>"):
            head[ids[token]] = 0.0
    generation = model.generation_config
    generation.decoder_start_token_id, generation.forced_bos_token_id = ids["</s>"], ids["<s>"]
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = ids["<s>"], ids["</s>"], ids["<pad>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@functools.cache
def saved_florence() -> Path:
    """The folder of a tiny Florence-2."""
    folder = _ROOT / "florence"
    build_florence(folder)
    return folder
