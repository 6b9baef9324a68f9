"""``mmcam caption|vqa IMG --model hf:FOLDER --json`` on a saved tiny Qwen2-VL: the same JSON
contract as the other transformers folders, maps at the original image's size."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmcam
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.cli import main
from test_hf_cli import CAPTION_KEYS, VQA_KEYS, WORD_KEYS
from vlm_fixtures import SHAPES, llava_image
from vlm_qwen_fixtures import saved_qwen

LAYER = "model.visual.blocks.1"


def _record(capsys) -> dict:
    (line,) = capsys.readouterr().out.strip().splitlines()
    return json.loads(line)


def test_caption_json_on_a_saved_qwen2_vl_folder(capsys, tmp_path) -> None:
    folder, image = saved_qwen(), llava_image("wide")
    code = main(["caption", str(image), "--model", f"hf:{folder}", "--json", "--out", str(tmp_path)])
    assert code == 0
    record = _record(capsys)
    assert set(record) == CAPTION_KEYS
    assert (record["model"], record["layer"], record["method"]) == (f"hf:{folder}", LAYER, "gradcam")
    expected = mmcam.load(f"hf:{folder}").explain(image, guided=False, contrast=False)
    assert record["caption"] == expected.info["caption"] and record["words"]
    height, width = SHAPES["wide"]
    for position, word in enumerate(record["words"]):
        assert set(word) == WORD_KEYS and word["index"] == position and word["word"] == expected.labels[position]
        assert word["logprob"] == pytest.approx(expected.info["logprobs"][position], abs=1e-5)
        assert np.load(word["heatmap"]).shape == (height, width)


def test_vqa_json_with_given_and_generated_answers(capsys) -> None:
    folder, image = saved_qwen(), llava_image("tall")
    argv = ["vqa", str(image), "what color is the circle?", "--model", f"hf:{folder}?task=vqa", "--json", "--answer", "red", "--answer", "blue square"]
    assert main(argv) == 0
    record = _record(capsys)
    assert set(record) == VQA_KEYS and record["layer"] == LAYER
    assert [item["answer"] for item in record["explanations"]] == ["red", "blue square"]
    scores = [item["score"] for item in record["explanations"]]
    assert all(score < 0 for score in scores)  # log p(answer + end)
    assert record["probability"] == pytest.approx(np.exp(max(scores)), rel=1e-5)
    assert [word["word"] for word in record["question_words"]] == ["what", "color", "is", "the", "circle"]
    assert main(["vqa", str(llava_image("square")), "is there a red square?", "--model", f"hf:{folder}?task=vqa", "--json"]) == 0
    generated = _record(capsys)
    assert generated["answer"] == generated["explanations"][0]["answer"] and generated["answer"]
