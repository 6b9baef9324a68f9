"""Tiny transformers checkpoints, built from config objects and saved like a user would.

Hidden size 32, one layer, 32x32 images, patch 8 (a 4x4 grid); tokenizers built locally (a
WordPiece vocabulary for BERT-style models, a byte-level BPE trained on a few sentences for
GPT-2, a SentencePiece-style Unigram vocabulary). Each folder holds the model and its processor
(or image processor and tokenizer), as written by ``save_pretrained``, and is built once per
test session.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = [
    "a", "red", "blue", "green", "circle", "square", "tri", "##angle", "##s", "and", "the", "what",
    "color", "is", "it", "shape", "there", "yes", "no", "left", "right", "of", "on", ".", "?",
]
VOCAB = {token: index for index, token in enumerate(SPECIAL + WORDS)}
ANSWERS = ["red", "blue", "green", "yes", "no", "circle"]
SENTENCES = [
    "a red circle", "a blue square", "a green triangle", "a red circle and a blue square",
    "what color is it", "what shape is on the left", "is there a red square", "two triangles",
]
HIDDEN = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
VISION = dict(HIDDEN, image_size=32, patch_size=8, initializer_range=0.2)

_ROOT = Path(tempfile.mkdtemp(prefix="mmcam-hf-"))
atexit.register(shutil.rmtree, _ROOT, True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on shared cores: one intra-op thread is ~50x faster than two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bert_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab=VOCAB, do_lower_case=True)


def gpt2_tokenizer():
    """Byte-level BPE (GPT-2's scheme) trained on a few sentences: an alphabet of the characters
    seen plus 40 merges, so common words are one token and rarer ones split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = sorted(set("".join(SENTENCES)) | set(" .?"))
    trainer = trainers.BpeTrainer(
        vocab_size=1 + len(alphabet) + 40, special_tokens=["<|endoftext|>"], show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES * 4 + [" .", " ?"], trainer)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=end, eos_token=end, pad_token=end)


SENTENCEPIECES = [
    "▁a", "▁red", "▁blue", "▁circle", "▁square", "▁on", "▁the", "▁left", "Red", "Blue", "tri", "angle", "▁", ".",
    ",", "-", "(", ")", "s",
]


def sentencepiece_tokenizer(cased: bool = True):
    """A SentencePiece-style Unigram tokenizer (``▁`` marks a word start, Metaspace pre-tokenizer
    and decoder, like T5's and Llama's): the vocabulary has "▁red" but only "Red" for the
    capital, so "Red" is read as a lone "▁" and "Red"; an uncased one lower-cases first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    letters = [char for char in "abcdefghijklmnopqrstuvwxyzRB" if char not in SENTENCEPIECES]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((p, -2.0) for p in SENTENCEPIECES), *((c, -6.0) for c in letters)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    if not cased:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _output_bias(model) -> torch.Tensor:
    """The bias of the layer that produces the vocabulary logits."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(VOCAB)]
    return heads[-1].bias


def _quiet_specials(model, keep: tuple[int, ...] = ()) -> None:
    """Random tiny models would generate special tokens often: push their output bias down (all
    but ``keep``), so generated captions and answers hold words."""
    with torch.no_grad():
        for token in range(len(SPECIAL)):
            if token not in keep:
                _output_bias(model)[token] = -20.0


def _blip_config():
    from transformers import BlipConfig

    text = dict(
        HIDDEN, vocab_size=len(VOCAB), encoder_hidden_size=32, max_position_embeddings=32,
        bos_token_id=VOCAB["[DEC]"], pad_token_id=VOCAB["[PAD]"], sep_token_id=VOCAB["[SEP]"],
        eos_token_id=VOCAB["[SEP]"], initializer_range=0.2,
    )
    return BlipConfig(vision_config=VISION, text_config=text, projection_dim=32, image_text_hidden_size=32)


def _blip_processor(folder: Path) -> None:
    from transformers import BlipImageProcessor, BlipProcessor

    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), bert_tokenizer()).save_pretrained(folder)


def build_blip_captioner(folder: Path) -> None:
    from transformers import BlipForConditionalGeneration

    model = BlipForConditionalGeneration(_blip_config())
    _quiet_specials(model)
    model.save_pretrained(folder)
    _blip_processor(folder)


def build_blip_vqa(folder: Path) -> None:
    from transformers import BlipForQuestionAnswering

    model = BlipForQuestionAnswering(_blip_config())
    _quiet_specials(model, keep=(VOCAB["[SEP]"],))
    with torch.no_grad():  # short answers: the end token is likely after a word or two
        _output_bias(model)[VOCAB["[SEP]"]] = 3.0
    model.save_pretrained(folder)
    _blip_processor(folder)


def build_blip2(folder: Path) -> None:
    """BLIP-2 with an OPT language model; its tokenizer holds the "<image>" placeholder."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tokenizer = gpt2_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    end = tokenizer.eos_token_id
    opt = dict(
        model_type="opt", vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
        num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64, bos_token_id=end,
        eos_token_id=end, pad_token_id=end, init_std=0.2,
    )
    qformer = dict(HIDDEN, vocab_size=len(VOCAB), encoder_hidden_size=32, max_position_embeddings=32, initializer_range=0.2)
    config = Blip2Config(
        vision_config=dict(VISION), qformer_config=qformer, text_config=opt, num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    Blip2Processor(image_processor, tokenizer, num_query_tokens=4).save_pretrained(folder)


def build_git(folder: Path) -> None:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    config = GitConfig(
        vision_config=dict(VISION), **HIDDEN, vocab_size=len(VOCAB), max_position_embeddings=32,
        bos_token_id=VOCAB["[CLS]"], eos_token_id=VOCAB["[SEP]"], pad_token_id=VOCAB["[PAD]"], initializer_range=0.2,
    )
    model = GitForCausalLM(config)
    _quiet_specials(model)
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    GitProcessor(image_processor, bert_tokenizer()).save_pretrained(folder)


def build_vilt(folder: Path) -> None:
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor, ViltProcessor

    config = ViltConfig(
        **VISION, vocab_size=len(VOCAB), max_position_embeddings=16, max_image_length=-1,
        num_labels=len(ANSWERS), id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)},
    )
    ViltForQuestionAnswering(config).save_pretrained(folder)
    image_processor = ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8)
    ViltProcessor(image_processor, bert_tokenizer()).save_pretrained(folder)


def _encoder_decoder(folder: Path, encoder, decoder, start: int, end: int, pad: int) -> None:
    from transformers import VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = start, end, pad
    model.save_pretrained(folder)


def _bert_decoder():
    from transformers import BertConfig, BertLMHeadModel

    config = BertConfig(
        **HIDDEN, vocab_size=len(VOCAB), max_position_embeddings=32, is_decoder=True, add_cross_attention=True,
        initializer_range=0.2,
    )
    decoder = BertLMHeadModel(config)
    _quiet_specials(decoder)
    return decoder


def build_ved_convnext_gpt2(folder: Path) -> None:
    from transformers import ConvNextConfig, ConvNextImageProcessor, GPT2Config, GPT2LMHeadModel

    from mmcam.adapters.hf import ConvNextTokenEncoder

    tokenizer = gpt2_tokenizer()
    encoder = ConvNextTokenEncoder(
        ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=4, image_size=32, initializer_range=0.2)
    )
    end = tokenizer.eos_token_id
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=32, add_cross_attention=True,
            bos_token_id=end, eos_token_id=end, initializer_range=0.2,
        )
    )
    _encoder_decoder(folder, encoder, decoder, start=end, end=end, pad=end)
    tokenizer.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)


def build_ved_vit_sentencepiece(folder: Path) -> None:
    """ViT encoder, GPT-2 decoder, the cased SentencePiece tokenizer (T5's conventions: the
    decoder starts from <pad> and stops at </s>)."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTImageProcessor, ViTModel

    tokenizer = sentencepiece_tokenizer(cased=True)
    pad, end = tokenizer.pad_token_id, tokenizer.eos_token_id
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=32, add_cross_attention=True,
            bos_token_id=pad, eos_token_id=end, initializer_range=0.2,
        )
    )
    _encoder_decoder(folder, ViTModel(ViTConfig(**VISION)), decoder, start=pad, end=end, pad=pad)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def build_ved_resnet_bert(folder: Path) -> None:
    from transformers import ResNetConfig, ViTImageProcessor

    from mmcam.adapters.hf import ResNetTokenEncoder

    encoder = ResNetTokenEncoder(ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"))
    _encoder_decoder(folder, encoder, _bert_decoder(), start=VOCAB["[CLS]"], end=VOCAB["[SEP]"], pad=VOCAB["[PAD]"])
    bert_tokenizer().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def build_ved_vit_bert(folder: Path) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    encoder = ViTModel(ViTConfig(**VISION))
    _encoder_decoder(folder, encoder, _bert_decoder(), start=VOCAB["[CLS]"], end=VOCAB["[SEP]"], pad=VOCAB["[PAD]"])
    bert_tokenizer().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def build_ved_deit_bert(folder: Path) -> None:
    from transformers import DeiTConfig, DeiTModel, ViTImageProcessor

    encoder = DeiTModel(DeiTConfig(**VISION))  # CLS and distillation tokens before the 4x4 patches
    _encoder_decoder(folder, encoder, _bert_decoder(), start=VOCAB["[CLS]"], end=VOCAB["[SEP]"], pad=VOCAB["[PAD]"])
    bert_tokenizer().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def build_ved_swin_bert(folder: Path) -> None:
    from transformers import SwinConfig, SwinModel, ViTImageProcessor

    encoder = SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4))
    _encoder_decoder(folder, encoder, _bert_decoder(), start=VOCAB["[CLS]"], end=VOCAB["[SEP]"], pad=VOCAB["[PAD]"])
    bert_tokenizer().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


BUILDERS = {
    "blip": build_blip_captioner,
    "blip2": build_blip2,
    "git": build_git,
    "ved-convnext-gpt2": build_ved_convnext_gpt2,
    "ved-resnet-bert": build_ved_resnet_bert,
    "ved-vit-bert": build_ved_vit_bert,
    "ved-deit-bert": build_ved_deit_bert,
    "ved-swin-bert": build_ved_swin_bert,
    "ved-vit-sentencepiece": build_ved_vit_sentencepiece,
    "blip-vqa": build_blip_vqa,
    "vilt": build_vilt,
}
CAPTIONERS = ["blip", "blip2", "git", "ved-convnext-gpt2", "ved-resnet-bert", "ved-vit-bert", "ved-deit-bert", "ved-swin-bert"]


@functools.cache
def saved(family: str) -> Path:
    """The folder of the tiny ``family`` checkpoint (built on first use, with a fixed seed)."""
    folder = _ROOT / family
    torch.manual_seed(0)
    BUILDERS[family](folder)
    return folder


@functools.cache
def adapter(family: str):
    """``mmcam.load("hf:" + folder)``, exactly as a user would call it."""
    import mmcam

    return mmcam.load(f"hf:{saved(family)}")


@functools.cache
def image_file() -> Path:
    """A 40x56 RGB image (not the models' 32x32): maps must come back at this size."""
    rows, columns = np.mgrid[0:40, 0:56]
    pixels = np.zeros((40, 56, 3), dtype=np.uint8)
    pixels[..., 0] = (rows * 6).clip(0, 255)
    pixels[..., 1] = (columns * 4).clip(0, 255)
    pixels[(rows - 20) ** 2 + (columns - 15) ** 2 < 64] = (230, 30, 30)
    path = _ROOT / "scene.png"
    Image.fromarray(pixels).save(path)
    return path
