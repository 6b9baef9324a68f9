"""``mmcam eval``: the JSON contract and its values on small runs of the shipped models."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmcam
from mmcam.cli import main
from mmcam.demo import sample_path
from mmcam.eval.datasets import easy_vqa_items
from mmcam.eval.faithfulness import grow_background_mask
from mmcam.eval.localization import iou, read_boxes
from mmcam.eval.pointing import center_map, random_map

METHOD_NAMES = {"gradcam", "hirescam", "gradcam++", "xgradcam", "layercam"}


def run_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_iou_of_inclusive_boxes() -> None:
    assert iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    assert iou((0, 0, 4, 4), (5, 5, 9, 9)) == 0.0


def test_vqa_grounding_numbers_equal_a_direct_computation(capsys) -> None:
    """The command's numbers for gradcam, the baselines and the model's accuracy, recomputed here
    item by item through the public adapter API on the same items (so --limit, --seed and
    --methods reach the evaluation, and each number is what it says)."""
    limit, seed = 16, 3
    result = run_json(capsys, "grounding", "--model", "easy-vqa", "--limit", str(limit), "--seed", str(seed))
    assert set(result) == {"eval", "model", "n", "methods"}
    assert (result["eval"], result["model"], result["n"]) == ("grounding", "easy-vqa", limit)
    assert METHOD_NAMES | {"guided_backprop", "guided_gradcam", "center", "random"} <= set(result["methods"])

    adapter = mmcam.load("easy-vqa")
    items = easy_vqa_items(adapter.scorer.model.vocab, limit, color_or_shape_only=True)
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {"gradcam": [], "center": [], "random": []}
    energy, correct = [], 0
    for item in items:
        explanation = adapter.explain(item.image, item.question, method="gradcam", guided=False, counterfactual=False)
        correct += explanation.info["answer"] == item.answer
        mask = grow_background_mask(item.image, grow=3)  # the shape, grown by 3 px
        maps = {"gradcam": explanation.heatmaps[0], "center": center_map(mask.shape), "random": random_map(mask.shape, rng)}
        for name, heatmap in maps.items():
            hits[name].append(bool(heatmap.max() > 0 and mask[heatmap == heatmap.max()].any()))
        energy.append(float(maps["gradcam"][mask].sum() / maps["gradcam"].sum()))
    scores = result["methods"]
    for name, hit in hits.items():
        assert scores[name]["pointing"] == pytest.approx(np.mean(hit), abs=1e-12) and scores[name]["n"] == limit, name
    assert scores["gradcam"]["energy"] == pytest.approx(np.mean(energy), rel=1e-4)
    assert result["methods"]["model"] == {"accuracy": correct / limit, "n": limit}
    assert scores["gradcam"]["pointing"] >= 0.9 > scores["center"]["pointing"]  # the maps find the shape
    for name, metrics in scores.items():
        for metric in ("pointing", "energy", "accuracy"):
            assert metric not in metrics or 0 <= metrics[metric] <= 1, (name, metric)


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
    assert "needs --data FILE.jsonl; built-in data exists for --model easy-vqa, shapes-captioner" in capsys.readouterr().err
    assert main(["eval", "localization", "--model", "efficientnet_lite0"]) == 2
    assert "needs --data FILE.jsonl (a classifier: --boxes FILE)" in capsys.readouterr().err
