"""Issue 10, item 2: the JSON records and the figures say which Guided Backprop rule ran and on
which activations; ViTs (GELU, tokens) go through ``mmcam classify`` with real maps."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

import mmcam
from mmcam.adapters.classifier import ClassifierAdapter
from mmcam.core.guided import GUIDED_RULE
from mmcam.demo import sample_path
from mmcam.records import classify_record

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _tiny_vit_adapter() -> ClassifierAdapter:
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=3
    ).eval()
    return ClassifierAdapter(model, "tiny-vit", ["a", "b", "c"], MEAN, STD, input_size=(32, 32))


def test_records_name_the_rule_and_the_activations_it_ran_on() -> None:
    adapter = _tiny_vit_adapter()
    explanation = adapter.explain(sample_path("chelsea.jpg"), ["b"], method="guided_gradcam")
    record = classify_record(explanation, "chelsea.jpg", None)
    # 3 blocks, one GELU each in their MLP: the rule ran on exactly those 3 calls
    assert record["guided_backprop"] == {"rule": GUIDED_RULE, "activations": {"gelu": 3}}
    assert record["layer"] == "blocks.1" and record["explanations"][0]["peak_xy"] is not None
    title = explanation.guided_figure()._suptitle.get_text()
    assert GUIDED_RULE in title and "gelu x3" in title


def test_records_say_null_without_a_guided_pass_and_relu_for_the_shipped_captioner() -> None:
    adapter = _tiny_vit_adapter()
    plain = adapter.explain(sample_path("chelsea.jpg"), ["b"], method="gradcam", guided=False)
    assert classify_record(plain, "chelsea.jpg", None)["guided_backprop"] is None
    captioner = mmcam.load("shapes-captioner")
    from mmcam.data.scenes import make_split

    explanation = captioner.explain(make_split("test", 1)[0].image)
    relus = sum(1 for module in captioner.scorer.model.encoder.modules() if isinstance(module, torch.nn.ReLU))
    assert explanation.guided_backprop == {"rule": GUIDED_RULE, "activations": {"relu": relus}}


def test_a_timm_vit_through_mmcam_classify_gives_maps_and_exit_0(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mmcam", "classify", str(sample_path("chelsea.jpg")), "--model", "vit_tiny_patch16_224", "--json", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["layer"] == "blocks.10"  # class-token pooled: the block before the last
    heatmap = np.load(record["explanations"][0]["heatmap"])
    assert heatmap.shape == (300, 451) and heatmap.max() == pytest.approx(1.0)


def test_contrast_maps_are_the_base_methods_and_skip_the_guided_pass() -> None:
    from mmcam.data.scenes import make_split

    captioner = mmcam.load("shapes-captioner")
    image = make_split("test", 1)[0].image
    guided = captioner.explain(image, "a red circle", method="guided_hirescam")
    plain = captioner.explain(image, "a red circle", method="hirescam", guided=False)
    assert guided.guided_gradients.shape[0] == 3  # the three words, not their three contrasts
    np.testing.assert_allclose(guided.contrasts, plain.contrasts, rtol=1e-5, atol=1e-6)
    assert not np.allclose(guided.heatmaps, plain.heatmaps, atol=1e-3)  # the words' maps are Guided
