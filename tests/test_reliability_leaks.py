"""Bounded leak tests (issue #7): many explanations in one process keep memory flat, leave no hook
behind and do not grow the model-lock registry.

Memory is the process's resident set (``/proc/self/statm``) after ``gc.collect()``, measured once
after a warm-up (first calls allocate caches: autograd's, vmap's, the allocator's arenas) and once
after the repetitions. The warm-up runs every shape the loop uses once (a first call with a new
number of targets allocates; an incomplete warm-up once showed +3.9 MiB that did not grow further).

The bound, 16 MiB, was chosen from measurements: the growth seen over 200 and 2000 tiny-model
repetitions and over 40 and 300 adapter repetitions was between -0.6 and +0.3 MiB (allocator noise),
while a leak of what one repetition holds (the input, activations, per-target gradients and guided
input gradients: 0.88 MiB for the tiny model here, checked below) would add 175 MiB over 200
repetitions. So the bound has over 25x margin over the noise and still catches a leak of a tenth
of one repetition's tensors per call.

The long version (2000 tiny-model repetitions, 300 through the easy-VQA adapter) is marked slow and
is not run by default::

    python -m pytest -m slow tests/test_reliability_leaks.py -s
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import easy_vqa
import pytest
import torch
from torch import nn

import mmcam
from mmcam import ClassTarget, ContrastTarget, GradCAM
from mmcam.core.hooks import _MODEL_LOCKS
from mmcam.core.methods import METHODS
from mmcam.targets import TopClassTarget
from reliability_support import hook_count, one_torch_thread  # noqa: F401

RSS_BOUND_MIB = 16.0
STATM = Path("/proc/self/statm")
pytestmark = pytest.mark.skipif(not STATM.exists(), reason="resident memory is read from /proc/self/statm (Linux)")


def resident_mib() -> float:
    gc.collect()
    pages = int(STATM.read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Dropout(0.2),
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)).mean(dim=(-2, -1)))


def tiny_explanations(repetitions: int) -> dict[str, float]:
    """Warm up, then ``repetitions`` explanations (rotating methods, guided every other call,
    counterfactual maps) with one model; a throwaway model every 25 calls. Returns the figures."""
    torch.manual_seed(0)
    model = SmallNet().train()  # explained in eval mode, restored to train each time
    images = torch.rand(2, 3, 64, 64)
    targets = [ClassTarget(1), ContrastTarget(2, 3), TopClassTarget(0)]

    def explain(step: int) -> int:
        with GradCAM(model, "features.4", method=list(METHODS)[step % len(METHODS)]) as cam:
            record = cam.gradients(images, targets, guided=step % 2 == 0)
            cam.maps(record)
            cam.maps(record, counterfactual=True, upsample=False)
        if step % 25 == 0:
            with GradCAM(SmallNet().eval()) as throwaway:
                throwaway(images, [ClassTarget(0)])
        tensors = [images, record.activations, record.gradients, record.scores]
        tensors += [record.input_gradients] if record.input_gradients is not None else []
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    hooks_before = hook_count(model)
    footprint = max(explain(step) for step in range(20))
    locks_before, rss_before = len(_MODEL_LOCKS), resident_mib()
    for step in range(repetitions):
        explain(step)
    rss_after = resident_mib()
    assert model.training and all(module.training for module in model.modules())
    return {
        "repetitions": repetitions,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "growth_mib": rss_after - rss_before,
        "footprint_mib": footprint / 2**20,
        "hooks_added": hook_count(model) - hooks_before,
        "locks_added": len(_MODEL_LOCKS) - locks_before,
    }


def vqa_explanations(repetitions: int) -> dict[str, float]:
    """The shipped easy-VQA model through its adapter: Grad-CAM, Guided Grad-CAM, counterfactual
    maps and word attributions per call, on different images and questions."""
    adapter = mmcam.load("easy-vqa")
    paths = easy_vqa.get_test_image_paths()
    questions = ["what color is the shape?", "what shape is in the image?", "is there a red circle?"]
    model = adapter.scorer.model
    hooks_before = hook_count(model)
    for step in range(6):  # every minibatch shape used below (1-3 answers) once
        adapter.explain(paths[step], questions[step % 3], top=1 + step % 3)
    locks_before, rss_before = len(_MODEL_LOCKS), resident_mib()
    for step in range(repetitions):
        adapter.explain(paths[step % len(paths)], questions[step % 3], top=1 + step % 3)
    rss_after = resident_mib()
    return {
        "repetitions": repetitions,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "growth_mib": rss_after - rss_before,
        "hooks_added": hook_count(model) - hooks_before,
        "locks_added": len(_MODEL_LOCKS) - locks_before,
    }


def check(figures: dict[str, float], label: str) -> None:
    print(f"\nleak {label}: " + ", ".join(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}" for key, value in figures.items()))
    assert figures["hooks_added"] == 0
    assert figures["locks_added"] <= 0  # throwaway models' entries go with them
    assert figures["growth_mib"] < RSS_BOUND_MIB, figures
    if "footprint_mib" in figures:  # the bound stays well below a one-tensor-set-per-call leak
        assert figures["footprint_mib"] * figures["repetitions"] / 10 > RSS_BOUND_MIB


def test_tiny_model_200_explanations_do_not_leak() -> None:
    check(tiny_explanations(200), "tiny model")


def test_easy_vqa_adapter_40_explanations_do_not_leak() -> None:
    check(vqa_explanations(40), "easy-vqa adapter")


@pytest.mark.slow
def test_long_run_2000_tiny_and_300_vqa_explanations_do_not_leak() -> None:
    """``python -m pytest -m slow tests/test_reliability_leaks.py -s`` (a few minutes)."""
    check(tiny_explanations(2000), "tiny model, long")
    check(vqa_explanations(300), "easy-vqa adapter, long")
