"""Guided Backprop made on first use (explain's default ``guided="lazy"``): the same numbers as
computing it in the explaining pass, computed once for a whole batch, never for callers that do
not look, and refused when the model changed in between."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmcam
from mmcam.core import gradcam as engine
from mmcam.data.scenes import make_split


@pytest.fixture(scope="module")
def captioner():
    return mmcam.load("shapes-captioner")


@pytest.fixture(scope="module")
def scenes():
    return make_split("test", 2)


@pytest.fixture
def passes(monkeypatch):
    """How many lazy Guided Backprop passes ran."""
    count = {"passes": 0}
    original = engine.GradCAM._guided_later

    def counted(self, *args, **kwargs):
        count["passes"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(engine.GradCAM, "_guided_later", counted)
    return count


def test_lazy_guided_equals_the_eager_pass_exactly_and_runs_once_per_batch(captioner, scenes, passes) -> None:
    images, captions = [scene.image for scene in scenes], [scene.caption for scene in scenes]
    lazy = captioner.explain_batch(images, captions)
    assert passes["passes"] == 0 and all(item.has_guided for item in lazy)  # explain() itself pays nothing
    eager = captioner.explain_batch(images, captions, guided=True)
    for late, now in zip(lazy, eager, strict=True):
        np.testing.assert_array_equal(late.heatmaps, now.heatmaps)  # guided_hirescam: map x |guided|
        np.testing.assert_array_equal(late.guided_gradients, now.guided_gradients)
        assert late.guided_backprop == now.guided_backprop == {"rule": now.guided_backprop["rule"], "activations": {"relu": 5}}
    assert passes["passes"] == 1  # one pass for the whole batch, then cached


def test_no_guided_and_a_plain_method_never_compute_it(captioner, scenes, passes) -> None:
    plain = captioner.explain(scenes[0].image, scenes[0].caption, method="gradcam")
    plain.heatmaps
    assert passes["passes"] == 0
    none = captioner.explain(scenes[0].image, scenes[0].caption, method="gradcam", guided=False)
    assert none.guided_gradients is None and none.guided_backprop is None and not none.has_guided


def test_a_model_changed_after_explaining_is_refused(scenes) -> None:
    captioner = mmcam.load("shapes-captioner")
    explanation = captioner.explain(scenes[0].image, scenes[0].caption)
    with torch.no_grad():
        next(captioner.scorer.model.parameters()).mul_(1.5)
    with pytest.raises(RuntimeError, match="the model's weights changed after it was explained"):
        explanation.heatmaps


def test_a_bad_guided_value_is_refused(captioner, scenes) -> None:
    with pytest.raises(ValueError, match="guided must be True, False or 'lazy'"):
        captioner.explain(scenes[0].image, scenes[0].caption, guided="later")


def test_a_bfloat16_model_gives_float32_maps_and_lazy_guided() -> None:
    from mmcam.pipeline import ItemLabels, ModelPass, explanations, run_pass
    from mmcam.io import load_image
    from mmcam.targets import ClassTarget

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    ).eval()
    image = torch.rand(1, 3, 8, 8)
    items = [ItemLabels(load_image(np.zeros((8, 8, 3), np.uint8)), ["a"], [0])]
    made = {}
    for dtype in (torch.float32, torch.bfloat16):
        typed = model.to(dtype)
        cam, record = run_pass(ModelPass(typed, "0"), image.to(dtype), [ClassTarget(0)], method="guided_gradcam", guided="lazy")
        (made[dtype],) = explanations("classify", "toy", cam, record, items, method="guided_gradcam", explained=1)
        assert made[dtype].grid_maps.dtype == np.float32 and made[dtype].guided_gradients.dtype == np.float32
    np.testing.assert_allclose(made[torch.bfloat16].heatmaps, made[torch.float32].heatmaps, atol=0.05)


def test_a_lazy_explanation_pickles_and_copies_with_its_guided_backprop(captioner, scenes) -> None:
    import copy
    import pickle

    lazy = captioner.explain(scenes[0].image, scenes[0].caption)
    restored = pickle.loads(pickle.dumps(lazy))
    copied = copy.deepcopy(captioner.explain(scenes[0].image, scenes[0].caption))
    for other in (restored, copied):
        assert other.guided_later is None
        np.testing.assert_array_equal(other.guided_gradients, lazy.guided_gradients)
        np.testing.assert_array_equal(other.heatmaps, lazy.heatmaps)
        assert other.guided_backprop == lazy.guided_backprop


def test_a_map_that_is_zero_everywhere_with_a_nonzero_gradient_is_said_so() -> None:
    from mmcam.io import load_image
    from mmcam.pipeline import ItemLabels, ModelPass, explanations, run_pass
    from mmcam.targets import ClassTarget

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    ).eval()
    with torch.no_grad():
        model[4].weight.copy_(torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]]))  # class 0: all evidence negative
    items = [ItemLabels(load_image(np.zeros((8, 8, 3), np.uint8)), ["down", "up"], [0, 1])]
    cam, record = run_pass(ModelPass(model, "1"), torch.rand(1, 3, 8, 8), [ClassTarget(0), ClassTarget(1)], method="gradcam", guided=False)
    with pytest.warns(UserWarning, match=r"the gradcam map of 'down' at layer '1' is zero everywhere"):
        (explanation,) = explanations("classify", "toy", cam, record, items, method="gradcam", explained=2)
    assert not explanation.grid_maps[0].any() and explanation.grid_maps[1].any()
    assert explanation.counterfactual_maps[0].any()  # what lowers the score is still shown
