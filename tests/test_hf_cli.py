"""``mmcam caption|vqa --model hf:FOLDER --json`` on saved tiny BLIP and ViLT folders: the same JSON
contract as the shipped models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_fixtures import ANSWERS, adapter, image_file, one_thread, saved  # noqa: F401 (autouse fixture)
from mmcam.cli import main

CAPTION_KEYS = {"image", "model", "layer", "method", "caption", "words", "guided_backprop"}
WORD_KEYS = {"word", "index", "logprob", "peak_xy", "bbox", "heatmap"}
VQA_KEYS = {"image", "question", "model", "layer", "method", "answer", "probability", "top", "explanations", "question_words", "guided_backprop"}
REPOSITORY = Path(__file__).resolve().parents[1]


def _record(capsys) -> dict:
    (line,) = capsys.readouterr().out.strip().splitlines()
    return json.loads(line)


def test_caption_json_on_a_saved_blip_folder(capsys, tmp_path) -> None:
    folder = saved("blip")
    code = main(["caption", str(image_file()), "--model", f"hf:{folder}", "--caption", "a red triangle", "--json", "--out", str(tmp_path)])
    assert code == 0
    record = _record(capsys)
    assert set(record) == CAPTION_KEYS
    assert (record["model"], record["layer"], record["method"]) == (f"hf:{folder}", "vision_model.encoder.layers.0", "gradcam")
    assert record["caption"] == "a red triangle"
    assert [word["word"] for word in record["words"]] == ["a", "red", "triangle"]
    expected = adapter("blip").explain(image_file(), "a red triangle", guided=False, contrast=False)
    for position, word in enumerate(record["words"]):
        assert set(word) == WORD_KEYS and word["index"] == position
        assert word["logprob"] == pytest.approx(expected.info["logprobs"][position], abs=1e-5)
        x, y = word["peak_xy"]
        assert 0 <= x < 56 and 0 <= y < 40  # the original image's frame
        assert np.load(word["heatmap"]).shape == (40, 56)


def test_caption_without_a_caption_explains_the_generated_one(capsys) -> None:
    assert main(["caption", str(image_file()), "--model", f"hf:{saved('blip')}", "--json"]) == 0
    record = _record(capsys)
    expected = adapter("blip").caption_tokens(image_file())
    assert record["caption"] == " ".join(expected.words)
    assert len(record["words"]) == len(expected.words)


def test_vqa_json_on_a_saved_vilt_folder(capsys) -> None:
    folder = saved("vilt")
    assert main(["vqa", str(image_file()), "what color is the triangle", "--model", f"hf:{folder}", "--json", "--top", "2"]) == 0
    record = _record(capsys)
    assert set(record) == VQA_KEYS
    assert record["layer"] == "vilt.embeddings.patch_embeddings.projection"
    assert record["answer"] in ANSWERS and record["answer"] == record["explanations"][0]["answer"]
    assert [item["answer"] for item in record["top"][:2]] == [item["answer"] for item in record["explanations"]]
    assert [word["word"] for word in record["question_words"]] == ["what", "color", "is", "the", "triangle"]
    assert all(isinstance(word["attribution"], float) for word in record["question_words"])


def test_vqa_json_on_a_saved_blip_folder_with_given_answers(capsys) -> None:
    folder = saved("blip-vqa")
    argv = ["vqa", str(image_file()), "what color is it", "--model", f"hf:{folder}", "--json", "--answer", "red", "--answer", "green triangle"]
    assert main(argv) == 0
    record = _record(capsys)
    assert set(record) == VQA_KEYS
    assert [item["answer"] for item in record["explanations"]] == ["red", "green triangle"]
    scores = [item["score"] for item in record["explanations"]]
    assert all(score < 0 for score in scores)  # log p(answer)
    assert record["probability"] == pytest.approx(np.exp(max(scores)), rel=1e-5)


def test_vqa_from_a_separate_process(tmp_path) -> None:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}
    argv = [sys.executable, "-m", "mmcam", "vqa", str(image_file()), "what color is it", "--model", f"hf:{saved('vilt')}", "--json", "--out", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["answer"] in ANSWERS
    assert Path(record["explanations"][0]["heatmap"]).is_file()
    assert "Loading weights" not in result.stderr  # no progress bars between the JSON lines
