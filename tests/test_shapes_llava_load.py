"""``mmcam.load("shapes-llava")``: the shipped LLaVA through the same hf: path as any user
checkpoint, captions by default and questions with ``task="vqa"`` (CLI: ``mmcam vqa`` asks)."""

from __future__ import annotations

import json

import easy_vqa
import pytest

import mmcam
from mmcam.cli import main
from mmcam.data.scenes import make_split


@pytest.fixture(scope="module")
def scene():
    return make_split("test", 7)[6]  # one of the test scenes the model captions exactly


def test_shipped_llava_captions_with_a_map_per_word_on_its_8x8_patch_grid(scene) -> None:
    adapter = mmcam.load("shapes-llava")
    explanation = adapter.explain(scene.image)
    assert adapter.kind == "caption" and "shapes-llava" in mmcam.available_models()
    assert explanation.info["caption"] == scene.caption
    assert explanation.grid_maps.shape == (len(scene.caption.split()), 8, 8)
    assert explanation.layer == "model.multi_modal_projector"  # the image tokens the language model reads


def test_shipped_llava_answers_through_the_vqa_cli(capsys) -> None:
    # Question 1 ("what is the color of the triangle?" -> red)
    questions, answers, image_ids = easy_vqa.get_test_questions()
    path = easy_vqa.get_test_image_paths()[image_ids[1]]
    assert main(["vqa", path, questions[1], "--model", "shapes-llava", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model"] and record["answer"] == answers[1]
    assert record["explanations"][0]["peak_xy"] is not None
