"""``mmcam caption|vqa IMG --model hf:FOLDER --json`` on a saved tiny LLaVA: the same JSON contract
as the other transformers folders; ``mmcam vqa`` reads the same folder as a VQA model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmcam
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.cli import main
from test_hf_cli import CAPTION_KEYS, VQA_KEYS, WORD_KEYS
from vlm_fixtures import SHAPES, llava_image, saved_llava


def _record(capsys) -> dict:
    (line,) = capsys.readouterr().out.strip().splitlines()
    return json.loads(line)


def test_caption_json_on_a_saved_llava_folder(capsys, tmp_path) -> None:
    folder, image = saved_llava(), llava_image("wide")
    code = main(["caption", str(image), "--model", f"hf:{folder}", "--caption", "a red circle", "--json", "--out", str(tmp_path)])
    assert code == 0
    record = _record(capsys)
    assert set(record) == CAPTION_KEYS
    assert (record["model"], record["layer"], record["method"]) == (f"hf:{folder}", "model.multi_modal_projector", "guided_hirescam")
    assert [word["word"] for word in record["words"]] == ["a", "red", "circle"]
    expected = mmcam.load(f"hf:{folder}").explain(image, "a red circle", guided=False, contrast=False)
    height, width = SHAPES["wide"]
    for position, word in enumerate(record["words"]):
        assert set(word) == WORD_KEYS and word["index"] == position
        assert word["logprob"] == pytest.approx(expected.info["logprobs"][position], abs=1e-5)
        assert np.load(word["heatmap"]).shape == (height, width)


def test_vqa_json_on_the_same_folder(capsys) -> None:
    folder, image = saved_llava(), llava_image("tall")
    argv = ["vqa", str(image), "what color is the circle?", "--model", f"hf:{folder}", "--json", "--answer", "red", "--answer", "blue square"]
    assert main(argv) == 0
    record = _record(capsys)
    assert set(record) == VQA_KEYS
    assert (record["layer"], record["method"]) == ("model.multi_modal_projector", "hirescam")
    assert [item["answer"] for item in record["explanations"]] == ["red", "blue square"]
    scores = [item["score"] for item in record["explanations"]]
    assert all(score < 0 for score in scores)  # log p(answer + end)
    assert record["probability"] == pytest.approx(np.exp(max(scores)), rel=1e-5)
    assert [word["word"] for word in record["question_words"]] == ["what", "color", "is", "the", "circle"]


def test_vqa_generates_its_answer(capsys) -> None:
    assert main(["vqa", str(llava_image("square")), "is there a red square?", "--model", f"hf:{saved_llava()}", "--json"]) == 0
    record = _record(capsys)
    assert record["answer"] == record["explanations"][0]["answer"] and record["answer"]
