"""VQA evaluation on plain-background images: do answer maps land on the shape, and are they
faithful to the model's answer probability?"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.maps import GUIDED_PREFIX, guided_backprop_at_original_size, maps_at_original_size
from ..adapters.vqa import VQAAdapter
from ..core.maps import upsample
from ..core.methods import METHODS
from .faithfulness import faithfulness_of_maps, grow_background_mask
from .pointing import center_map, energy_inside, inside_outside_ratio, pointing_hit, random_map
from .summary import summarise


@dataclass(frozen=True)
class VQAItem:
    """An image (H, W, 3) uint8, a question, and the ground-truth answer."""

    image: np.ndarray
    question: str
    answer: str


def _chunks(items: Sequence[VQAItem], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def batch_answer_maps(
    adapter: VQAAdapter, items: Sequence[VQAItem], methods: Sequence[str], answers: Sequence[int] | None = None
):
    """For a minibatch, explained from one pass for the predicted answer (or the given answer
    indices): the run and, per map name, maps (N, H, W) at the image size (every method, its
    Guided variant, Guided Backprop)."""
    wanted = [[answer] for answer in answers] if answers is not None else None
    run = adapter.run([item.image for item in items], [item.question for item in items], wanted, guided=True)
    sizes = [image.size for image in run.images]
    maps: dict[str, np.ndarray] = {"guided_backprop": np.stack([m[0] for m in guided_backprop_at_original_size(run.record, sizes)])}
    for method in methods:
        for name in (method, GUIDED_PREFIX + method):
            maps[name] = np.stack([m[0] for m in maps_at_original_size(run.record, sizes, method=name)])
    return run, maps


def answer_grounding(
    adapter: VQAAdapter,
    items: Sequence[VQAItem],
    *,
    methods: Sequence[str] = tuple(METHODS),
    batch_size: int = 64,
    grow: int = 3,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Per map name: ``pointing`` (the predicted answer's map peaks on the shape: pixels far
    from the background colour, grown by ``grow`` px), ``energy`` and ``inside_outside`` (median)
    on that mask, over the given items (e.g. questions whose answer is a colour or a shape);
    plus ``accuracy`` of the model on them under the ``model`` key."""
    rng = np.random.default_rng(seed)
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    correct = 0
    for chunk in tqdm(list(_chunks(items, batch_size)), desc="grounding", disable=not show_progress):
        run, maps = batch_answer_maps(adapter, chunk, methods)
        predicted = run.record.output.argmax(dim=1).tolist()
        for n, item in enumerate(chunk):
            correct += run.answers[n][predicted[n]] == item.answer  # the item's own candidates (a generative model has no list)
            mask = grow_background_mask(item.image, grow=grow)
            shape = mask.shape
            candidates = {name: stack[n] for name, stack in maps.items()}
            candidates["center"] = center_map(shape)
            candidates["random"] = random_map(shape, rng)
            for name, heatmap in candidates.items():
                values[name]["pointing"].append(float(pointing_hit(heatmap, mask)))
                values[name]["energy"].append(energy_inside(heatmap, mask))
                values[name]["inside_outside"].append(inside_outside_ratio(heatmap, mask))
    results = {name: summarise(metrics) for name, metrics in values.items()}
    results["model"] = {"accuracy": correct / max(len(items), 1), "n": len(items)}
    return results


def answer_faithfulness(
    adapter: VQAAdapter,
    items: Sequence[VQAItem],
    *,
    methods: Sequence[str] = tuple(METHODS),
    batch_size: int = 32,
    grid: int = 7,
    steps: int = 16,
    with_road: bool = True,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Per map name (the methods and their Guided variants, Guided Backprop and a random map), over the
    items, for the predicted answer's probability: the paper's
    ``occlusion_spearman`` (rank correlation of the map pooled to ``grid`` x ``grid`` with the
    drop in score when each cell is set to zero) and ``occlusion_blur_spearman`` (cells replaced
    by a blurred copy), ``deletion_auc`` and ``insertion_auc`` (RISE; ``deletion_mean_auc``
    deletes to the image's mean colour instead of zero), and ROAD's ``road_morf``
    / ``road_lerf``. Occlusion correlations use the pre-softmax score, as the paper does;
    deletion, insertion and ROAD the probability. nan correlations (a constant map or no
    change under occlusion) are left out of the mean and counted in ``n_undefined``."""
    rng = np.random.default_rng(seed)
    keep = {*methods, *(GUIDED_PREFIX + method for method in methods), "guided_backprop"}
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for chunk in tqdm(list(_chunks(items, batch_size)), desc="faithfulness", disable=not show_progress):
        run, maps = batch_answer_maps(adapter, chunk, methods)
        predicted = run.record.output.argmax(dim=1)
        for n in range(len(chunk)):
            answer, question = int(predicted[n]), run.question_ids[n : n + 1]
            image = run.pixels[n]

            def logit(images, answer=answer, question=question):
                return adapter.scorer.score(images, question.expand(images.shape[0], -1))[:, answer]

            def probability(images, answer=answer, question=question):
                return adapter.scorer.score(images, question.expand(images.shape[0], -1)).softmax(dim=1)[:, answer]

            candidates = {name: _at_input(stack[n], image) for name, stack in maps.items() if name in keep}
            candidates["random"] = random_map(tuple(image.shape[-2:]), rng)
            scored = faithfulness_of_maps(logit, probability, image, candidates, grid=grid, steps=steps, with_road=with_road, rng=rng)
            for name, scores in scored.items():
                for metric, value in scores.items():
                    values[name][metric].append(value)
    return {name: summarise(metrics) for name, metrics in values.items()}


def _at_input(heatmap: np.ndarray, image: torch.Tensor) -> np.ndarray:
    """A map resized to the model's input size (faithfulness perturbs the model's input)."""
    size = tuple(image.shape[-2:])
    if heatmap.shape == size:
        return heatmap
    return upsample(torch.from_numpy(heatmap), size).numpy()
