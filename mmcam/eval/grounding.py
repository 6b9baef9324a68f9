"""Per-word grounding of a captioner on generated scenes: does each colour or shape word's map
point at the object the word names?

One forward and backward pass per scene gives every word's gradients; every CAM method, the
Guided variants, the model's attention and the baselines are scored on the same words.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.maps import GUIDED_PREFIX, at_size, guided_backprop_at_original_size, maps_at_original_size
from ..adapters.captioning import CaptionAdapter, attention_maps
from ..core.methods import METHODS
from ..data.scenes import Scene, word_kind
from .pointing import (
    box_mask,
    center_map,
    energy_inside,
    expected_uniform_pointing,
    grow_box,
    inside_outside_ratio,
    pointing_hit,
    random_map,
    uniform_map,
)

BASELINES = ("center", "uniform", "random")
WORD_KINDS = ("color", "shape")


def scene_word_maps(adapter: CaptionAdapter, scene: Scene, methods: Sequence[str]) -> tuple[list[int], dict[str, np.ndarray]]:
    """Positions of the scene's colour/shape words and, per map name, maps (T, H, W) for them,
    all from one forward and backward pass of the ground-truth caption."""
    positions = [w for w, obj in enumerate(scene.word_objects) if obj is not None]
    run = adapter.run(scene.image, scene.caption, words=positions, guided=True, contrast=False)
    size = [run.image.size]
    maps: dict[str, np.ndarray] = {"guided_backprop": guided_backprop_at_original_size(run.record, size)[0]}
    for method in methods:
        for name in (method, GUIDED_PREFIX + method):
            maps[name] = maps_at_original_size(run.record, size, method=name)[0]
    native = attention_maps(run.record.output, [run.tokens.spans[w] for w in positions])
    attention = None if native is None else at_size(torch.from_numpy(native), run.image.size).numpy()
    if attention is not None:
        maps["attention"] = attention
    return positions, maps


def caption_grounding(
    adapter: CaptionAdapter,
    scenes: Iterable[Scene],
    *,
    tolerance: int = 6,
    methods: Sequence[str] = tuple(METHODS),
    seed: int = 0,
    show_progress: bool = False,
    total: int | None = None,
) -> dict[str, dict[str, float]]:
    """Scores per map name: ``pointing`` (peak inside the word's object box grown by
    ``tolerance`` px), ``energy`` (share of the map inside the box), ``inside_outside`` (mean
    inside the box over mean outside; median over words, since a map that is zero outside gives
    inf), each overall and per word kind (``pointing_color``...), and pointing split by whether
    the word's colour/shape is unique in the scene (``pointing_color_unique``,
    ``pointing_color_shared``...). Baselines: ``center`` (a centred Gaussian), ``uniform``
    (pointing = the box's area share, the hit rate of a random point) and ``random`` (a smooth
    random map, seeded)."""
    rng = np.random.default_rng(seed)
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for scene in tqdm(scenes, desc="grounding", total=total, disable=not show_progress):
        positions, maps = scene_word_maps(adapter, scene, methods)
        shape = scene.image.shape[:2]
        for t, position in enumerate(positions):
            word = scene.words[position]
            kind = word_kind(word)
            obj = scene.objects[scene.word_objects[position]]
            attribute = obj.color if kind == "color" else obj.shape
            shared = sum((o.color if kind == "color" else o.shape) == attribute for o in scene.objects) > 1
            box = box_mask(obj.box, shape)
            grown = box_mask(grow_box(obj.box, tolerance, shape), shape)
            word_maps = {name: word_maps_t[t] for name, word_maps_t in maps.items()}
            word_maps["center"] = center_map(shape)
            word_maps["uniform"] = uniform_map(shape)
            word_maps["random"] = random_map(shape, rng)
            for name, heatmap in word_maps.items():
                hit = expected_uniform_pointing(grown) if name == "uniform" else float(pointing_hit(heatmap, grown))
                scores = {
                    "pointing": hit,
                    "energy": energy_inside(heatmap, box),
                    "inside_outside": inside_outside_ratio(heatmap, box),
                }
                for metric, value in scores.items():
                    values[name][metric].append(value)
                    values[name][f"{metric}_{kind}"].append(value)
                values[name][f"pointing_{kind}_{'shared' if shared else 'unique'}"].append(hit)
    return {name: _summarise(metrics) for name, metrics in values.items()}


def _summarise(metrics: dict[str, list[float]]) -> dict[str, float]:
    summary: dict[str, float] = {}
    for metric, items in sorted(metrics.items()):
        array = np.asarray(items, dtype=np.float64)
        if metric.startswith("inside_outside"):
            finite = array[~np.isnan(array)]
            summary[metric] = float(np.median(finite)) if finite.size else float("nan")
        else:
            summary[metric] = float(array.mean())
        if metric in ("pointing", "pointing_color", "pointing_shape"):
            summary[f"n_{metric[9:] or 'words'}"] = int(array.size)
    return summary


def grounding_table(results: dict[str, dict[str, float]], metrics: Sequence[str]) -> str:
    """A markdown table: one row per map name, one column per metric."""
    lines = ["| map | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, scores in results.items():
        cells = [_format(scores.get(metric)) for metric in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def caption_faithfulness(
    adapter: CaptionAdapter,
    scenes: Iterable[Scene],
    *,
    methods: Sequence[str] = tuple(METHODS),
    grid: int = 7,
    steps: int = 16,
    with_road: bool = True,
    seed: int = 0,
    show_progress: bool = False,
    total: int | None = None,
) -> dict[str, dict[str, float]]:
    """Faithfulness of every colour/shape word's maps (each method and its Guided variant, Guided
    Backprop, a random map) to the word's teacher-forced score: occlusion against log p(w_t),
    deletion / insertion / ROAD on p(w_t), all measures of
    :func:`~mmcam.eval.faithfulness.faithfulness_of_maps`, averaged over words."""
    from .faithfulness import faithfulness_of_maps
    from .pointing import random_map

    rng = np.random.default_rng(seed)
    keep = {*methods, *(GUIDED_PREFIX + method for method in methods), "guided_backprop"}
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for scene in tqdm(scenes, desc="faithfulness", total=total, disable=not show_progress):
        positions, maps = scene_word_maps(adapter, scene, methods)
        scorer = adapter.scorer
        image = scorer.preprocess(scene.image)
        tokens = scorer.tokenize(scene.caption)
        ids = torch.tensor([tokens.ids])
        for t, position in enumerate(positions):
            word_id = tokens.ids[position]

            def logprob(images, position=position, word_id=word_id):
                return scorer.score(images, ids.expand(images.shape[0], -1)).logprobs[:, position, word_id]

            def probability(images, logprob=logprob):
                return logprob(images).exp()

            candidates = {name: stack[t] for name, stack in maps.items() if name in keep}
            candidates["random"] = random_map(tuple(image.shape[-2:]), rng)
            for name, scores in faithfulness_of_maps(logprob, probability, image, candidates, grid=grid, steps=steps, with_road=with_road, rng=rng).items():
                for metric, value in scores.items():
                    values[name][metric].append(value)
    return {name: _mean_of_defined(metrics) for name, metrics in values.items()}


def _mean_of_defined(metrics: dict[str, list[float]]) -> dict[str, float]:
    summary: dict[str, float] = {}
    for metric, items in metrics.items():
        array = np.asarray(items, dtype=np.float64)
        defined = array[~np.isnan(array)]
        summary[metric] = float(defined.mean()) if defined.size else float("nan")
        if metric.endswith("spearman"):
            summary[f"n_undefined_{metric}"] = int(array.size - defined.size)
    summary["n_words"] = len(next(iter(metrics.values()))) if metrics else 0
    return summary
