"""Tiny InstructBLIP checkpoints built offline: a BLIP vision tower (hidden 32, 1 layer, 32x32
input, patch 8: a 4x4 grid), a Q-Former (hidden 32, 1 layer, 4 query tokens, BERT WordPiece
tokenizer of ``hf_fixtures``) and a language model, Llama (decoder-only, as Vicuna checkpoints)
or T5 (encoder-decoder, as Flan-T5 checkpoints), with a byte-level BPE tokenizer that adds
``<s>`` like Llama's. ``InstructBlipProcessor`` adds the ``<image>`` placeholder to it. Saved with
``save_pretrained`` like a user's checkpoint; built once per test session.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from hf_fixtures import HIDDEN, VISION, VOCAB, bert_tokenizer
from vlm_fixtures import _ROOT, SENTENCES

SPECIALS = ["<pad>", "<s>", "</s>"]
QUERY_TOKENS = 4
INSTRUCTION_WORDS = ["A short image description:", "Say what you see."]


def language_tokenizer():
    """Byte-level BPE trained on a few sentences and the instructions (their characters are its
    alphabet); ``<s>`` is added before every text, as Llama's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIALS) + 100, special_tokens=SPECIALS, show_progress=False,
    )
    tokenizer.train_from_iterator((SENTENCES + INSTRUCTION_WORDS) * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_instructblip(folder: Path, language: str = "llama") -> None:
    """A random tiny InstructBLIP and its processor in ``folder``; ``language`` is ``llama`` or
    ``t5``. The language model's head is scaled up and its special rows (but the end token)
    zeroed, so generated text holds words and ends now and then."""
    from transformers import (
        BlipImageProcessor, InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor,
    )

    tokenizer = language_tokenizer()
    processor = InstructBlipProcessor(
        BlipImageProcessor(size={"height": VISION["image_size"], "width": VISION["image_size"]}), tokenizer,
        bert_tokenizer(), num_query_tokens=QUERY_TOKENS,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in [*SPECIALS, "<image>"]}
    if language == "llama":
        text = dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
        )
    else:
        text = dict(
            model_type="t5", vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
            decoder_start_token_id=ids["<pad>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
            bos_token_id=ids["<s>"], tie_word_embeddings=False,
        )
    qformer = dict(
        HIDDEN, vocab_size=len(VOCAB), max_position_embeddings=64, cross_attention_frequency=1, initializer_range=0.2,
    )
    config = InstructBlipConfig(
        vision_config=dict(VISION, initializer_range=0.02), qformer_config=qformer, text_config=text,
        num_query_tokens=QUERY_TOKENS, image_token_index=ids["<image>"],
    )
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        head = model.language_model.get_output_embeddings().weight
        head.mul_(8.0 if language == "llama" else 0.5)
        for token in ("<pad>", "<s>", "<image>"):
            head[ids[token]] = 0.0
    generation = model.generation_config
    generation.pad_token_id, generation.eos_token_id, generation.bos_token_id = ids["<pad>"], ids["</s>"], ids["<s>"]
    if language == "t5":
        generation.decoder_start_token_id = ids["<pad>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@functools.cache
def saved_instructblip(language: str = "llama") -> Path:
    """The folder of a tiny InstructBLIP whose language model is ``llama`` or ``t5``."""
    folder = _ROOT / f"instructblip-{language}"
    build_instructblip(folder, language)
    return folder
