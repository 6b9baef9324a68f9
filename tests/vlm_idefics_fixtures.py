"""Tiny Idefics3 and SmolVLM checkpoints built offline: a SigLIP-style vision tower (hidden 32,
2 layers, 16x16 tiles, patch 4: a 4x4 patch grid per tile), a pixel-shuffle connector (scale 2:
4 image tokens per tile), a Llama language model (hidden 32, 2 layers), a byte-level BPE
tokenizer with the image, tile and global-image tokens as special tokens, and the Idefics3 chat
template, saved with ``save_pretrained`` like a user's checkpoint. The image processor resizes
the longest edge to 48 and splits into 16-pixel tiles, so the test images of ``vlm_fixtures``
(square 40x40, wide 40x64, tall 64x40) become 3x3, 2x3 and 3x2 tiles plus the global view.
Built once per test session.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from vlm_fixtures import SENTENCES

TILE, PATCH, LONGEST_EDGE, SCALE = 16, 4, 48, 2
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
SPECIALS = ["<pad>", "<s>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>", *ROW_COL]
# the Idefics3 checkpoints' template (BOS first, "User:<image>text<end_of_utterance>\nAssistant:")
TEMPLATE = (
    "<s>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CLASSES = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}

_ROOT = Path(tempfile.mkdtemp(prefix="mmcam-idefics-"))
atexit.register(shutil.rmtree, _ROOT, True)


def idefics_tokenizer():
    """Byte-level BPE trained on a few sentences, with the Idefics3 special tokens added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    text = [*SENTENCES, "User: Assistant: Describe the image."]
    alphabet = sorted(set("".join(text)) | set(" .?:\n"))
    trainer = trainers.BpeTrainer(vocab_size=len(SPECIALS) + len(alphabet) + 60, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(text * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="<end_of_utterance>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_idefics(
    folder: Path, family: str = "idefics3", *, template: bool = True, splitting: bool = True, seq_len: int = IMAGE_SEQ_LEN
) -> None:
    """A random tiny Idefics3 (``family="idefics3"``) or SmolVLM (``"smolvlm"``) and its processor
    in ``folder``; ``template=False`` saves no chat template, ``splitting=False`` an image
    processor that squashes every image to one tile, ``seq_len`` the processor's image tokens
    per view (the model reads ``IMAGE_SEQ_LEN``)."""
    import transformers
    from transformers import Idefics3VisionConfig, LlamaConfig

    name = CLASSES[family]
    tokenizer = idefics_tokenizer()
    image_processor = getattr(transformers, f"{name}ImageProcessor")(
        size={"longest_edge": LONGEST_EDGE}, max_image_size={"longest_edge": TILE}, do_image_splitting=splitting,
    )
    parts = {"image_processor": image_processor, "tokenizer": tokenizer}
    if family == "smolvlm":
        parts["video_processor"] = transformers.SmolVLMVideoProcessor(max_image_size={"longest_edge": TILE})
    processor = getattr(transformers, f"{name}Processor")(
        **parts, image_seq_len=seq_len, chat_template=TEMPLATE if template else None,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIALS}
    vision = Idefics3VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
        patch_size=PATCH,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=ids["<s>"],
        eos_token_id=ids["<end_of_utterance>"], pad_token_id=ids["<pad>"],
    )
    config = getattr(transformers, f"{name}Config")(
        vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=SCALE, image_token_id=ids["<image>"],
        pad_token_id=ids["<pad>"],
    )
    torch.manual_seed(0)
    model = getattr(transformers, f"{name}ForConditionalGeneration")(config).eval()
    with torch.no_grad():  # random tiny models favour special tokens: keep generated text in words
        head = model.lm_head.weight
        head.mul_(8.0)
        for token in SPECIALS:
            if token != "<end_of_utterance>":
                head[ids[token]] = 0.0
    generation = model.generation_config
    generation.pad_token_id, generation.eos_token_id, generation.bos_token_id = ids["<pad>"], ids["<end_of_utterance>"], ids["<s>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@functools.cache
def saved_idefics(family: str = "idefics3", variant: str = "default") -> Path:
    """The folder of a tiny ``family`` checkpoint: ``default``, ``no-template``, ``no-splitting``
    or ``seq-len`` (a processor expanding each view to one image token too many)."""
    folder = _ROOT / f"{family}-{variant}"
    build_idefics(
        folder, family, template=variant != "no-template", splitting=variant != "no-splitting",
        seq_len=IMAGE_SEQ_LEN + (variant == "seq-len"),
    )
    return folder
