"""``mmcam eval``: the JSON contract on small runs of the shipped models."""

from __future__ import annotations

import json

import pytest

from mmcam.cli import main
from mmcam.demo import sample_path
from mmcam.eval.localization import iou, read_boxes

METHOD_NAMES = {"gradcam", "hirescam", "gradcam++", "xgradcam", "layercam"}


def run_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_iou_of_inclusive_boxes() -> None:
    assert iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    assert iou((0, 0, 4, 4), (5, 5, 9, 9)) == 0.0


def test_vqa_grounding_json_contract(capsys) -> None:
    result = run_json(capsys, "grounding", "--model", "easy-vqa", "--limit", "24")
    assert set(result) == {"eval", "model", "n", "methods"}
    assert (result["eval"], result["model"], result["n"]) == ("grounding", "easy-vqa", 24)
    assert METHOD_NAMES | {"guided_backprop", "guided_gradcam", "center", "random"} <= set(result["methods"])
    gradcam, center = result["methods"]["gradcam"], result["methods"]["center"]
    assert gradcam["pointing"] >= 0.9 > center["pointing"]
    assert result["methods"]["model"]["accuracy"] == 1.0


def test_classifier_localization_from_a_boxes_file(capsys, tmp_path) -> None:
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image,label,x0,y0,x1,y1\n{sample_path('coffee.jpg')},espresso,150,0,450,260\n")
    assert read_boxes(boxes)[0].boxes == {"espresso": [(150, 0, 450, 260)]}
    result = run_json(capsys, "localization", "--model", "efficientnet_lite0", "--boxes", str(boxes))
    scores = result["methods"]["gradcam"]
    assert result["n"] == 1 and scores["top1_cls_error"] == 0.0
    assert set(scores) == {"top1_loc_error", "top5_loc_error", "top1_cls_error", "top5_cls_error", "n"}


def test_eval_errors_are_one_line(capsys) -> None:
    assert main(["eval", "faithfulness", "--model", "efficientnet_lite0"]) == 2
    assert "supports --model easy-vqa, shapes-captioner" in capsys.readouterr().err
    assert main(["eval", "localization", "--model", "efficientnet_lite0"]) == 2
    assert "needs --boxes FILE" in capsys.readouterr().err
