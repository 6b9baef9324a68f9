"""``hf:`` loading offline, clear errors, layer choice, subword words, images and token grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmcam
from hf_fixtures import bert_tokenizer, gpt2_tokenizer, image_file, one_thread, saved  # noqa: F401 (autouse fixture)
from mmcam.adapters.hf import ImageSettings, PatchTokens
from mmcam.adapters.hf.layout import grid_of
from mmcam.adapters.hf.words import encode_words
from mmcam.errors import InputError


def test_a_model_id_that_is_not_here_fails_offline_with_one_clear_line(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as error:
        mmcam.load("hf:nobody-here/no-such-captioner")
    message = str(error.value)
    assert "\n" not in message
    assert "'nobody-here/no-such-captioner' is not available offline" in message
    assert "save_pretrained" in message and "hf:/path/to/FOLDER" in message


def test_the_cli_prints_that_line_and_exits_2(monkeypatch, capsys) -> None:
    from mmcam.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["caption", str(image_file()), "--model", "hf:nobody-here/no-such-captioner"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmcam: error: model 'nobody-here/no-such-captioner' is not available offline")


def test_folders_that_are_not_checkpoints_are_input_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="has no config.json; save the model there"):
        mmcam.load(f"hf:{tmp_path}")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(InputError, match="is a file; give the folder"):
        mmcam.load(f"hf:{tmp_path / 'weights.bin'}")


def test_an_unsupported_class_names_the_supported_ones(tmp_path) -> None:
    from transformers import BertConfig

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="BertForMaskedLM model, which mmcam does not explain; supported: Blip"):
        mmcam.load(f"hf:{tmp_path}")


def test_a_folder_without_its_processor_says_what_to_save(tmp_path) -> None:
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(saved("vilt") / name, tmp_path / name)
    with pytest.raises(InputError, match=r"has no tokenizer \(tokenizer.json / vocab.txt.*processor.save_pretrained"):
        mmcam.load(f"hf:{tmp_path}")
    shutil.copy(saved("vilt") / "tokenizer.json", tmp_path)
    with pytest.raises(InputError, match=r"has no image processor \(preprocessor_config.json"):
        mmcam.load(f"hf:{tmp_path}")


def test_another_layer_can_be_chosen_and_unknown_layers_list_candidates() -> None:
    folder = saved("blip")
    patch_conv = mmcam.load(f"hf:{folder}", layer="vision_model.embeddings.patch_embedding")
    explanation = patch_conv.explain(image_file(), "a red circle", guided=False, contrast=False)
    assert explanation.layer == "vision_model.embeddings.patch_embedding"  # a (B, C, 4, 4) conv map
    assert explanation.heatmaps.shape == (3, 40, 56)
    with pytest.raises(InputError, match="unknown layer 'vision_model.encoder.layer.0'; candidates: vision_model.encoder"):
        mmcam.load(f"hf:{folder}", layer="vision_model.encoder.layer.0")


def test_wordpiece_words_merge_their_pieces_and_punctuation_and_skip_specials() -> None:
    ids, pieces = encode_words(bert_tokenizer(), "A red triangles. On the left?", special_tokens=True)
    assert pieces.words == ("a", "red", "triangles", "on", "the", "left")
    assert pieces.spans == ((1,), (2,), (3, 4, 5, 6), (7,), (8,), (9, 10))  # [CLS] 0, tri ##angle ##s ., left ?, [SEP] 11
    assert pieces.unknown == ()


def test_unknown_words_keep_their_spelling() -> None:
    ids, pieces = encode_words(bert_tokenizer(), "a purple circle", special_tokens=False)
    assert pieces.words == ("a", "purple", "circle") and pieces.unknown == (1,)


def test_byte_level_bpe_words_include_their_leading_space_token() -> None:
    tokenizer = gpt2_tokenizer()
    ids, pieces = encode_words(tokenizer, "a green circle.", special_tokens=False)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert pieces.words == ("a", "green", "circle")
    green = [tokens[p] for p in pieces.spans[1]]
    assert "".join(green).replace("Ġ", " ") == " green" and len(green) > 1
    assert tokens[-1] == "." and pieces.spans[2][-1] == len(ids) - 1  # the full stop is scored with "circle"


@pytest.mark.parametrize(
    ("tokens", "size", "expected"),
    [(17, (32, 32), (1, 4, 4)), (16, (32, 32), (0, 4, 4)), (18, (32, 32), (2, 4, 4)), (9, (48, 96), (1, 2, 4))],
)
def test_token_grids_follow_the_patch_layout(tokens, size, expected) -> None:
    assert grid_of(tokens, size) == expected


def test_patch_tokens_drop_the_cls_token_and_pass_maps_through() -> None:
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    grid = PatchTokens((32, 32))(tokens)
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[0, :, 0, 1], tokens[0, 2])  # token 1 after CLS is row 0, column 1
    conv_map = torch.rand(2, 3, 4, 4)
    assert PatchTokens((32, 32))(conv_map) is conv_map
    with pytest.raises(ValueError, match="do not form a patch grid"):
        PatchTokens((32, 32))(torch.rand(1, 23, 3))


def test_image_settings_resize_without_cropping_and_normalise() -> None:
    from transformers import CLIPImageProcessor, ConvNextImageProcessor, ViltImageProcessor

    convnext = ImageSettings.from_processor(ConvNextImageProcessor(size={"shortest_edge": 32}))
    clip = ImageSettings.from_processor(CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}))
    vilt = ImageSettings.from_processor(ViltImageProcessor(size={"shortest_edge": 36}, size_divisor=8))
    assert (convnext.size, clip.size, vilt.size) == ((32, 32), (32, 32), (32, 32))
    pixels = np.full((10, 20, 3), 255, dtype=np.uint8)
    tensor = convnext.tensor(pixels)
    assert tensor.shape == (3, 32, 32)
    np.testing.assert_allclose(tensor.numpy(), (1 - 0.5) / 0.5, atol=1e-6)  # ConvNeXt: mean = std = 0.5
