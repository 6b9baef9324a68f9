"""Thread safety (issue #7): threads sharing one model get exactly the maps of sequential calls,
because the engine runs explanations of the same model one at a time (a per-model lock).

The model is left in TRAIN mode with Dropout and BatchNorm on purpose: if one thread's call could
restore train mode (or remove a hook) while another thread's forward pass runs, that thread's
maps would change, and the probe below would also see two forward passes at once.
"""

from __future__ import annotations

import threading
import time

import easy_vqa
import numpy as np
import pytest
import torch
from torch import nn

import mmcam
from mmcam import ClassTarget, ContrastTarget, GradCAM
from reliability_support import assert_lock_free, assert_unchanged, full_state, hook_count, one_torch_thread  # noqa: F401

ROUNDS = 6


class OverlapProbe(nn.Module):
    """Identity that counts forward passes running at the same time (and lingers a moment, to
    give an unserialised second thread every chance to overlap)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.most_active = 0
        self.guard = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.002)
        with self.guard:
            self.active -= 1
        return x


class TrainModeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.probe = OverlapProbe()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.probe(x)).mean(dim=(-2, -1)))


def run_in_threads(work, inputs: list) -> list[list]:
    """Each thread runs ``work(input)`` ROUNDS times, all threads starting each round together;
    returns every thread's results, and re-raises the first failure of any thread."""
    barrier = threading.Barrier(len(inputs))
    results: list[list] = [[] for _ in inputs]
    failures: list[BaseException] = []

    def loop(index: int) -> None:
        try:
            for _ in range(ROUNDS):
                barrier.wait(timeout=60)
                results[index].append(work(inputs[index]))
        except BaseException as error:  # reported in the main thread
            failures.append(error)
            barrier.abort()

    threads = [threading.Thread(target=loop, args=(index,)) for index in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if failures:
        raise failures[0]
    assert all(len(done) == ROUNDS for done in results)
    return results


@pytest.mark.parametrize("guided", [False, True], ids=["gradcam", "guided"])
def test_two_threads_on_one_model_match_sequential_calls(guided) -> None:
    torch.manual_seed(0)
    model = TrainModeNet().train()
    targets = [ClassTarget(0), ContrastTarget(1, 2), ClassTarget([3, 1])]
    inputs = [torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)]

    def explain(images: torch.Tensor):
        with GradCAM(model, "features.4") as cam:
            record = cam.gradients(images, targets, guided=guided)
            return cam.maps(record), record.input_gradients

    sequential = [explain(images) for images in inputs]
    before = full_state(model)
    model.probe.most_active = 0
    for index, rounds in enumerate(run_in_threads(explain, inputs)):
        for maps, input_gradients in rounds:
            torch.testing.assert_close(maps, sequential[index][0], rtol=0, atol=1e-6)
            if guided:
                torch.testing.assert_close(input_gradients, sequential[index][1], rtol=0, atol=1e-6)
    assert model.probe.most_active == 1  # never two forward passes at once
    assert_unchanged(before, full_state(model))
    assert model.training and hook_count(model) == 0
    assert_lock_free(model)


def test_two_threads_through_the_vqa_adapter_match_sequential_calls() -> None:
    adapter = mmcam.load("easy-vqa")
    paths = easy_vqa.get_test_image_paths()
    inputs = [(paths[0], "what color is the shape?"), (paths[1], "is there a circle in the image?")]

    def explain(item):
        return adapter.explain(*item, top=2)

    sequential = [explain(item) for item in inputs]
    hooks_before = hook_count(adapter.scorer.model)
    for index, rounds in enumerate(run_in_threads(explain, inputs)):
        expected = sequential[index]
        for explanation in rounds:
            assert explanation.labels == expected.labels
            np.testing.assert_allclose(explanation.scores, expected.scores, rtol=0, atol=1e-6)
            for name in ("heatmaps", "guided", "counterfactual"):
                np.testing.assert_allclose(getattr(explanation, name), getattr(expected, name), rtol=0, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(
                explanation.info["word_attributions"], expected.info["word_attributions"], rtol=0, atol=1e-6
            )
    assert hook_count(adapter.scorer.model) == hooks_before
    assert_lock_free(adapter.scorer.model)


def test_generated_captions_in_parallel_threads_match_sequential_calls() -> None:
    """Issue 10, item 4: generation runs under the model's lock too, and a capture records only
    its own thread's forward pass, so explanations of generated captions made while another
    thread generates equal the sequential ones."""
    from mmcam.data.scenes import make_split

    adapter = mmcam.load("shapes-captioner")
    scenes = make_split("test", 6)
    expected = [adapter.explain(scene.image, method="hirescam", guided=False, contrast=False) for scene in scenes]
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for _ in range(2):
                for scene in scenes[index::2]:
                    results[index].append(adapter.explain(scene.image, method="hirescam", guided=False, contrast=False))
                    adapter.caption_tokens(scenes[1 - index].image)  # generation interleaved with the other thread
        except BaseException as error:  # reported below, on the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in (0, 1):
        for explanation, reference in zip(results[index], expected[index::2] * 2, strict=True):
            assert explanation.info["caption"] == reference.info["caption"]
            np.testing.assert_array_equal(explanation.grid_maps, reference.grid_maps)
    assert_lock_free(adapter.scorer.model)
