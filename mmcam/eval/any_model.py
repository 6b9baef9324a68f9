"""Evaluations on any adapter (shipped, timm/torchvision classifiers, ``hf:`` captioners and VQA
models, your own scorer), on the items of a data file (see :mod:`mmcam.eval.items`).

Everything goes through the adapters' public ``explain`` / ``explain_batch``: one explanation
with Guided Backprop per method gives the method's map, its ``guided_`` variant and Guided
Backprop's of the item's fixed targets, and a perturbed image is scored by explaining it again
and reading the targets' scores. Targets: the
caption's words (the given caption, or the model's own), the VQA answer (given, or predicted),
the classifier's predicted class; fixed once from the trained model, so sanity compares maps of
the same targets.

Faithfulness perturbs the image's pixels (uint8, as a user's image is; shrunk to 512 px on its
longest side when larger), not the model's input tensor: "zero" is black, and the model's
preprocessing runs on every perturbed image. Scores: log p(word) for caption words, the answer's y^c (pre-softmax logit, or
log p for a generative VQA model), the class logit; probabilities: p(word), the answer's and the
class's probability.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ..core.localize import localization_box
from ..core.maps import GUIDED_PREFIX, at_size
from ..errors import InputError
from ..io import LoadedImage, load_image
from .faithfulness import faithfulness_of_maps
from .items import DataItem
from .localization import iou
from .pointing import box_mask, center_map, energy_inside, expected_uniform_pointing, grow_box, inside_outside_ratio, pointing_hit, random_map, uniform_map
from .sanity import cascading_randomization
from .summary import summarise

FAITHFULNESS_SIDE = 512  # longest side of the images faithfulness perturbs
SCORE_BATCH = 16  # perturbed images explained in one pass


@dataclass(frozen=True)
class Subject:
    """What one item's maps explain: the image, the caption or question the model reads, and
    the targets (caption word positions, one answer, one class index) with their labels."""

    image: LoadedImage
    text: str | None
    targets: tuple[int | str, ...]
    labels: tuple[str, ...]




def subject_of(adapter: Any, item: DataItem, words: Sequence[int] | None = None) -> Subject:
    """The item's fixed targets: ``words`` of the caption (default: all; the model's own caption
    when the item has none), the given or predicted answer, the predicted class."""
    image = load_image(item.image)
    if adapter.kind == "caption":
        text = item.text or adapter.explain(image, method="gradcam", guided=False, counterfactual=False, contrast=False).info["caption"]
        all_words = adapter.caption_tokens(None, text).words
        positions = tuple(range(len(all_words))) if words is None else tuple(words)
        return Subject(image, text, positions, tuple(all_words[w] for w in positions))
    if adapter.kind == "vqa":
        answer = item.answer or _explain(adapter, [image], Subject(image, item.text, (), ()), "gradcam")[0].labels[0]
        return Subject(image, item.text, (answer,), (answer,))
    if adapter.kind == "classify":
        explanation = adapter.explain(image, method="gradcam", guided=False, counterfactual=False)
        return Subject(image, None, (int(explanation.indices[0]),), (explanation.labels[0],))
    raise InputError(f"cannot evaluate a model of kind {adapter.kind!r}; kinds: caption, vqa, classify")


def _explain(adapter: Any, images: Sequence[Any], subject: Subject, method: str, guided: bool = False) -> list:
    """One explanation per image of the subject's targets (None targets: the model's best)."""
    options = {"method": method, "guided": guided, "counterfactual": False}
    if adapter.kind == "caption":
        words = list(subject.targets) or None
        return adapter.explain_batch(list(images), [subject.text] * len(images), words=words, contrast=False, **options)
    if adapter.kind == "vqa":
        answers = [list(subject.targets)] * len(images) if subject.targets else None
        return adapter.explain_batch(list(images), [subject.text] * len(images), answers, **options)
    return adapter.explain_batch(list(images), list(subject.targets) or None, **options)


def subject_maps(adapter: Any, subject: Subject, methods: Sequence[str]) -> dict[str, np.ndarray]:
    """Maps (T, H, W) in [0, 1] of the subject's targets at the image's size: ``guided_backprop``
    (|Guided Backprop| summed over colours), each method and its ``guided_`` variant (the map
    times that magnitude); one explanation with Guided Backprop per method."""
    maps: dict[str, np.ndarray] = {}
    for method in methods:
        explanation = _explain(adapter, [subject.image], subject, method, guided=True)[0]
        if not maps:
            magnitude = np.abs(explanation.guided_gradients[: len(explanation)]).sum(axis=1)
            maps["guided_backprop"] = at_size(torch.from_numpy(magnitude), subject.image.size).numpy()
        maps[method] = explanation.heatmaps
        maps[GUIDED_PREFIX + method] = dataclasses.replace(explanation, method=GUIDED_PREFIX + method).heatmaps
    return maps


def target_scores(adapter: Any, subject: Subject, images: Tensor) -> tuple[Tensor, Tensor]:
    """Scores y (B, T) and probabilities (B, T) of the subject's targets on ``images`` (B, 3, H,
    W) in [0, 1] (perturbed copies of the subject's image), as the adapter computes them."""
    explanations = []
    for start in range(0, len(images), SCORE_BATCH):
        pixels = [image.clamp(0, 1) for image in images[start : start + SCORE_BATCH]]
        if adapter.kind == "classify":
            explanations += adapter.explain_batch(pixels, list(subject.targets), method="gradcam", guided=False, counterfactual=False, top=len(adapter.labels))
        else:
            explanations += _explain(adapter, pixels, subject, "gradcam")
    scores = torch.tensor(np.stack([explanation.scores for explanation in explanations]), dtype=torch.float64)
    return scores, torch.tensor(np.stack([_probabilities(adapter, e) for e in explanations]), dtype=torch.float64)


def _probabilities(adapter: Any, explanation: Any) -> np.ndarray:
    if adapter.kind == "caption":
        return np.exp(np.asarray(explanation.info["logprobs"], dtype=np.float64))
    if adapter.kind == "vqa":
        return np.asarray(explanation.info["probabilities"], dtype=np.float64)
    by_index = {p["index"]: p["probability"] for p in explanation.info["predictions"]}
    return np.array([by_index[index] for index in explanation.indices], dtype=np.float64)


def _image_tensor(image: LoadedImage) -> Tensor:
    return torch.from_numpy(image.pixels).permute(2, 0, 1).float() / 255


def _at_most(image: LoadedImage, side: int) -> LoadedImage:
    """``image`` shrunk (Lanczos) so its longest side is at most ``side`` pixels."""
    height, width = image.size
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return LoadedImage(np.asarray(Image.fromarray(image.pixels).resize(size, Image.Resampling.LANCZOS)), image.source, image.notes)


def sanity_on_items(
    adapter: Any, items: Sequence[DataItem], *, methods: Sequence[str], seed: int = 0, show_progress: bool = False
) -> dict[str, dict[str, list]]:
    """Cascading randomisation (:func:`~mmcam.eval.sanity.cascading_randomization`) of every
    parameter layer of the adapter's model, on the items' fixed targets: per map name, Spearman
    and SSIM per step and the layer re-initialised at that step."""
    subjects = [subject_of(adapter, item) for item in items]

    def maps_of(model_adapter: Any) -> dict[str, np.ndarray]:
        collected: dict[str, list[np.ndarray]] = defaultdict(list)
        for subject in subjects:
            for name, stack in subject_maps(model_adapter, subject, methods).items():
                collected[name].extend(stack)
        return {name: np.stack(stack) for name, stack in collected.items()}

    return cascading_randomization(adapter, maps_of, seed=seed, show_progress=show_progress)


def faithfulness_on_items(
    adapter: Any,
    items: Sequence[DataItem],
    *,
    methods: Sequence[str],
    grid: int = 7,
    steps: int = 16,
    with_road: bool = True,
    seed: int = 0,
    show_progress: bool = False,
    side: int = FAITHFULNESS_SIDE,
) -> dict[str, dict[str, float]]:
    """Every measure of :func:`~mmcam.eval.faithfulness.faithfulness_of_maps` for each map name
    and a random map, per target (occlusion against the score y, deletion / insertion / ROAD
    on the probability), averaged over all targets of all items. An image larger than ``side``
    pixels is shrunk to it first (each curve holds dozens of perturbed copies of the image)."""
    rng = np.random.default_rng(seed)
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item in tqdm(items, desc="faithfulness", disable=not show_progress):
        subject = subject_of(adapter, item)
        subject = dataclasses.replace(subject, image=_at_most(subject.image, side))
        maps = subject_maps(adapter, subject, methods)
        image = _image_tensor(subject.image)
        for t in range(len(subject.targets)):

            def score(images: Tensor, t: int = t) -> Tensor:
                return target_scores(adapter, subject, images)[0][:, t]

            def probability(images: Tensor, t: int = t) -> Tensor:
                return target_scores(adapter, subject, images)[1][:, t]

            candidates = {name: stack[t] for name, stack in maps.items()}
            candidates["random"] = random_map(subject.image.size, rng)
            scored = faithfulness_of_maps(score, probability, image, candidates, grid=grid, steps=steps, with_road=with_road, rng=rng)
            for name, scores in scored.items():
                for metric, value in scores.items():
                    values[name][metric].append(value)
    return {name: summarise(metrics) for name, metrics in values.items()}


def _boxed_subjects(adapter: Any, item: DataItem) -> tuple[Subject, list[list[tuple[int, int, int, int]]]]:
    """The subject of a ground-truth item (the words with boxes, or the answer) and, per
    target, its boxes."""
    indices = sorted({box.index for box in item.boxes})
    subject = subject_of(adapter, item, words=indices) if adapter.kind == "caption" else subject_of(adapter, item)
    boxes = [[box.box for box in item.boxes if box.index == index] for index in indices]
    return subject, boxes


def grounding_on_items(
    adapter: Any,
    items: Sequence[DataItem],
    *,
    methods: Sequence[str],
    tolerance: int = 6,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Per map name and baseline (``center``, ``uniform``, ``random``), over every boxed word or
    answer: ``pointing`` (the map's peak inside the union of the target's boxes grown by
    ``tolerance`` px; for ``uniform`` the boxes' area share), ``energy`` (share of the map inside
    the boxes) and ``inside_outside`` (median). VQA adds the model's ``accuracy`` on the items'
    answers under ``model``."""
    rng = np.random.default_rng(seed)
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    correct = 0
    for item in tqdm(items, desc="grounding", disable=not show_progress):
        subject, boxes = _boxed_subjects(adapter, item)
        maps = subject_maps(adapter, subject, methods)
        shape = subject.image.size
        if adapter.kind == "vqa":
            predicted = _explain(adapter, [subject.image], Subject(subject.image, subject.text, (), ()), "gradcam")[0].labels[0]
            correct += predicted.strip().lower() == (item.answer or "").strip().lower()
        for t, target_boxes in enumerate(boxes):
            region = np.any([box_mask(box, shape) for box in target_boxes], axis=0)
            grown = np.any([box_mask(grow_box(box, tolerance, shape), shape) for box in target_boxes], axis=0)
            candidates = {name: stack[t] for name, stack in maps.items()}
            candidates |= {"center": center_map(shape), "uniform": uniform_map(shape), "random": random_map(shape, rng)}
            for name, heatmap in candidates.items():
                hit = expected_uniform_pointing(grown) if name == "uniform" else float(pointing_hit(heatmap, grown))
                values[name]["pointing"].append(hit)
                values[name]["energy"].append(energy_inside(heatmap, region))
                values[name]["inside_outside"].append(inside_outside_ratio(heatmap, region))
    results = {name: summarise(metrics) for name, metrics in values.items()}
    if adapter.kind == "vqa":
        results["model"] = {"accuracy": correct / len(items), "n": len(items)}
    return results


def localization_on_items(
    adapter: Any, items: Sequence[DataItem], *, methods: Sequence[str], show_progress: bool = False
) -> dict[str, dict[str, float]]:
    """The paper's localization per map name, over every boxed word or answer: the box of the
    map (15% of its maximum, largest segment) is correct when its IoU with one of the target's
    boxes is >= 0.5 (``loc_accuracy``); ``mean_iou``: the mean of the best IoU (0 for an empty
    map)."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item in tqdm(items, desc="localization", disable=not show_progress):
        subject, boxes = _boxed_subjects(adapter, item)
        for name, stack in subject_maps(adapter, subject, methods).items():
            for t, target_boxes in enumerate(boxes):
                found = localization_box(stack[t])
                overlap = max(iou(found, box) for box in target_boxes) if found is not None else 0.0
                values[name]["loc_accuracy"].append(float(overlap >= 0.5))
                values[name]["mean_iou"].append(overlap)
    return {name: summarise(metrics) for name, metrics in values.items()}
