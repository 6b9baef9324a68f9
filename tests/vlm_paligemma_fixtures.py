"""Tiny PaliGemma and Gemma 3 checkpoints built offline and saved like a user's.

Both have a SigLIP vision tower (hidden 32, 2 layers, 32x32 input) and a 2-layer Gemma language
model; the tokenizer is a byte-level BPE with the family's special tokens. PaliGemma: patch 8 (a
4x4 grid, 16 image tokens, ``image_seq_length`` in its image processor), no chat template; its
``gemma2`` variant (PaliGemma 2) has a Gemma 2 language model with soft-capped logits and a
sliding-window layer. Gemma 3: patch 4 (an 8x8 patch grid) pooled 4x4 by the projector into
2x2 = 4 image tokens (``mm_tokens_per_image``), a Gemma-3-style chat template with
``<start_of_image>``, a sliding-window layer (window 12, shorter than the prompt). Built once
per test session.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

SENTENCES = [
    "user\nDescribe the image.\nmodel\na red circle and a blue square", "caption en\n", "answer en ",
    "a blue square", "a green triangle", "what color is the circle?", "is there a red square?", "yes", "no",
    "Say what you see.",
]
PALIGEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<image>"]
GEMMA3_SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
    "<image_soft_token>",
]
GEMMA3_NAMED = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
# Gemma 3's chat template, in short: bos, turns opened by <start_of_turn>ROLE and closed by
# <end_of_turn>, the assistant's role called "model", an image written as <start_of_image>
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SIZE = 32
TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    head_dim=16, max_position_embeddings=256, tie_word_embeddings=False,
)

_ROOT = Path(tempfile.mkdtemp(prefix="mmcam-paligemma-"))
atexit.register(shutil.rmtree, _ROOT, True)


def bpe_tokenizer(specials: list[str], named: dict[str, str] | None = None):
    """Byte-level BPE trained on a few sentences (an alphabet of their characters, newline
    included, plus 80 merges); ``specials`` are special tokens, ``named`` names some
    (image_token, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = set("".join(SENTENCES))
    trainer = trainers.BpeTrainer(vocab_size=len(specials) + len(alphabet) + 80, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        extra_special_tokens=named or {},
    )


def _siglip(patch: int):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
        patch_size=patch, vision_use_head=False,
    )


def _words_only(model, tokenizer, keep: tuple[str, ...]) -> None:
    """Random tiny models favour special and added tokens: scale the output head up and zero the
    rows of every special or added token but ``keep`` (the end tokens), so generated text is
    made of words and ends now and then."""
    ids = {index for token, index in tokenizer.get_added_vocab().items() if token not in keep}
    with torch.no_grad():
        head = model.lm_head.weight
        head.mul_(8.0)
        head[sorted(ids)] = 0.0


def build_paligemma(folder: Path, *, seq_length: bool = True, gemma2: bool = False) -> None:
    """A random tiny PaliGemma and its processor in ``folder``; ``seq_length=False`` saves an image
    processor without ``image_seq_length`` (the processor then cannot be built); ``gemma2=True``
    is PaliGemma 2: a Gemma 2 language model (logit soft-capping, a sliding-window layer)."""
    from transformers import (
        Gemma2Config, GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    tokenizer = bpe_tokenizer(PALIGEMMA_SPECIALS, {"image_token": "<image>"})
    image_processor = SiglipImageProcessor(size={"height": SIZE, "width": SIZE}, image_seq_length=(SIZE // 8) ** 2)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <loc>/<seg> tokens
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in PALIGEMMA_SPECIALS}
    special = dict(bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"])
    if gemma2:
        text = Gemma2Config(
            vocab_size=len(tokenizer), final_logit_softcapping=5.0, attn_logit_softcapping=10.0, query_pre_attn_scalar=16,
            sliding_window=12, layer_types=["sliding_attention", "full_attention"], **special, **TEXT,
        )
    else:
        text = GemmaConfig(vocab_size=len(tokenizer), **special, **TEXT)
    config = PaliGemmaConfig(
        vision_config=_siglip(8), text_config=text, image_token_index=ids["<image>"], projection_dim=32, hidden_size=32,
        vocab_size=len(tokenizer), tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config).eval()
    _words_only(model, tokenizer, keep=("<eos>",))
    model.generation_config.update(pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"], bos_token_id=ids["<bos>"])
    model.save_pretrained(folder)
    if not seq_length:
        del image_processor.image_seq_length
    processor.save_pretrained(folder)


def build_gemma3(folder: Path, *, template: bool = True, pan_and_scan: bool = False) -> None:
    """A random tiny Gemma 3 and its processor in ``folder``; ``template=False`` saves no chat
    template, ``pan_and_scan=True`` an image processor that makes pan-and-scan crops."""
    from transformers import (
        Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor, Gemma3TextConfig,
    )

    tokenizer = bpe_tokenizer(GEMMA3_SPECIALS, GEMMA3_NAMED)
    image_processor = Gemma3ImageProcessor(
        size={"height": SIZE, "width": SIZE}, do_pan_and_scan=pan_and_scan, pan_and_scan_min_crop_size=8,
        pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2,
    )
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_TEMPLATE if template else None,
        image_seq_length=4,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in GEMMA3_SPECIALS}
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"], sliding_window=12, layer_types=["sliding_attention", "full_attention"], **TEXT,
    )
    config = Gemma3Config(
        vision_config=_siglip(4), text_config=text, mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"], tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers initialises the projection to zeros: the LM would not see the image
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    _words_only(model, tokenizer, keep=("<end_of_turn>",))
    model.generation_config.update(
        pad_token_id=ids["<pad>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]], bos_token_id=ids["<bos>"]
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@functools.cache
def saved_paligemma(variant: str = "default") -> Path:
    """The folder of a tiny PaliGemma: ``default``, ``gemma2`` (PaliGemma 2) or ``no-seq-length``."""
    folder = _ROOT / f"paligemma-{variant}"
    build_paligemma(folder, seq_length=variant != "no-seq-length", gemma2=variant == "gemma2")
    return folder


@functools.cache
def saved_gemma3(variant: str = "default") -> Path:
    """The folder of a tiny Gemma 3: ``default``, ``no-template`` or ``pan-and-scan``."""
    folder = _ROOT / f"gemma3-{variant}"
    build_gemma3(folder, template=variant != "no-template", pan_and_scan=variant == "pan-and-scan")
    return folder
