"""The JSON contracts of ``mmcam caption`` and ``mmcam vqa`` on the shipped models."""

from __future__ import annotations

import json

import easy_vqa
import numpy as np
import pytest
from PIL import Image

from mmcam.cli import main
from mmcam.data.scenes import make_split

CAPTION_KEYS = {"image", "model", "layer", "method", "caption", "words", "guided_backprop"}
WORD_KEYS = {"word", "index", "logprob", "peak_xy", "bbox", "heatmap"}
VQA_KEYS = {"image", "question", "model", "layer", "method", "answer", "probability", "top", "explanations", "question_words", "guided_backprop"}


def records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    scene = make_split("test", 1)[0]
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(scene.image).save(path)
    return path, scene


def test_caption_json_contract_with_given_caption(capsys, tmp_path, scene_file) -> None:
    path, scene = scene_file
    assert main(["caption", str(path), "--caption", scene.caption.upper() + ".", "--json", "--out", str(tmp_path)]) == 0
    (record,) = records(capsys)
    assert set(record) == CAPTION_KEYS
    assert (record["image"], record["model"], record["layer"]) == (str(path), "shapes-captioner", "encoder")
    assert record["caption"] == scene.caption
    assert [word["word"] for word in record["words"]] == list(scene.words)
    assert [word["index"] for word in record["words"]] == list(range(len(scene.words)))
    for word in record["words"]:
        assert set(word) == WORD_KEYS and word["logprob"] <= 0
        heatmap = np.load(word["heatmap"])
        assert heatmap.shape == (128, 128) and heatmap.dtype == np.float32
        if word["peak_xy"] is not None:
            x, y = word["peak_xy"]
            assert heatmap[y, x] == heatmap.max() == 1.0
    assert (tmp_path / "scene.html").is_file() and (tmp_path / "scene_attention.png").is_file()


def test_caption_generated_by_default_and_words_subset(capsys, scene_file) -> None:
    path, scene = scene_file
    assert main(["caption", str(path), "--json", "--words", "1", "2", "--method", "gradcam"]) == 0
    (record,) = records(capsys)
    assert record["caption"] == scene.caption  # the shipped model captions test scenes exactly
    assert [word["index"] for word in record["words"]] == [1, 2] and record["method"] == "gradcam"


def test_caption_batch_keeps_going_after_a_bad_line(capsys, tmp_path, scene_file) -> None:
    path, _ = scene_file
    batch = tmp_path / "items.jsonl"
    batch.write_text(
        json.dumps({"image": str(path)}) + "\n"
        + "{not json\n"
        + json.dumps({"image": str(path), "caption": "a purple circle"}) + "\n"
        + json.dumps({"image": str(tmp_path / "missing.png")}) + "\n"
        + json.dumps({"image": str(path), "caption": "a red circle"}) + "\n"
    )
    assert main(["caption", "--batch", str(batch), "--json"]) == 1
    first, bad_json, unknown_word, missing, last = records(capsys)
    assert set(first) == CAPTION_KEYS and set(last) == CAPTION_KEYS and last["caption"] == "a red circle"
    assert bad_json["error"].startswith("line 2: invalid JSON")
    assert "purple" in unknown_word["error"] and "image not found" in missing["error"]


def test_vqa_json_contract(capsys, tmp_path) -> None:
    image = easy_vqa.get_test_image_paths()[0]
    assert main(["vqa", image, "What color is the shape?", "--top", "3", "--json", "--out", str(tmp_path)]) == 0
    (record,) = records(capsys)
    assert set(record) == VQA_KEYS
    assert record["model"] == "easy-vqa" and record["layer"] == "image_encoder"
    assert record["explanations"][0]["answer"] == record["answer"] == record["top"][0]["answer"]
    assert len(record["explanations"]) == 3 and len(record["top"]) == 5
    assert set(record["explanations"][0]) == {"answer", "score", "peak_xy", "bbox", "heatmap"}
    assert [w["word"] for w in record["question_words"]] == ["what", "color", "is", "the", "shape"]
    assert np.load(record["explanations"][0]["heatmap"]).shape == (64, 64)


def test_vqa_given_answers_come_first_and_batches_run_in_minibatches(capsys, tmp_path) -> None:
    paths = easy_vqa.get_test_image_paths()
    assert main(["vqa", paths[0], "what color is the shape", "--answer", "blue", "--answer", "red", "--json"]) == 0
    (record,) = records(capsys)
    assert [item["answer"] for item in record["explanations"]] == ["blue", "red"]
    batch = tmp_path / "questions.jsonl"
    batch.write_text("".join(json.dumps({"image": paths[i], "question": "what shape is this?"}) + "\n" for i in range(5)))
    assert main(["vqa", "--batch", str(batch), "--batch-size", "2", "--json"]) == 0
    assert [r["image"] for r in records(capsys)] == [paths[i] for i in range(5)]


def test_contrast_and_counterfactual_maps_are_written_with_out(capsys, tmp_path, scene_file) -> None:
    image = easy_vqa.get_test_image_paths()[3]
    assert main(["vqa", image, "what color is the shape?", "--contrast", "yellow", "red", "--out", str(tmp_path / "v")]) == 0
    contrast = np.load(tmp_path / "v" / "3_contrast_yellow-vs-red.npy")
    assert contrast.shape == (64, 64) and contrast.max() == 1.0
    assert (tmp_path / "v" / "3_00_yellow_counterfactual.npy").is_file()
    path, scene = scene_file
    assert main(["caption", str(path), "--caption", "a red circle", "--out", str(tmp_path / "c")]) == 0
    names = sorted(p.name for p in (tmp_path / "c").glob("scene_contrast_*.npy"))
    assert names == ["scene_contrast_00-a-vs-runner-up.npy", "scene_contrast_01-red-vs-runner-up.npy", "scene_contrast_02-circle-vs-runner-up.npy"]
    capsys.readouterr()
