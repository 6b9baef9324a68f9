"""One entry point per evaluation, returning the JSON-ready result that ``mmcam eval`` prints:
``{"eval", "model", "n", "methods": {METHOD: {METRIC: VALUE}}}``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from ..registry import load

SUPPORTED = {
    "grounding": ("shapes-captioner", "easy-vqa"),
    "faithfulness": ("easy-vqa", "shapes-captioner"),
    "sanity": ("shapes-captioner", "easy-vqa"),
    "localization": ("shapes-captioner", "efficientnet_lite0", "any classifier with --boxes"),
}


def run_evaluation(
    evaluation: str,
    model: str,
    *,
    limit: int | None = None,
    methods: Sequence[str],
    tolerance: int = 6,
    seed: int = 0,
    show_progress: bool = False,
    boxes: str | None = None,
    with_road: bool = True,
) -> dict[str, Any]:
    """Run ``evaluation`` on a shipped ``model`` and return the result object."""
    supported = SUPPORTED.get(evaluation, ())
    if evaluation == "localization" and boxes:
        from .localization import classifier_localization, read_boxes

        adapter = load(model)
        if getattr(adapter, "kind", None) != "classify":
            raise InputError("--boxes localization needs a classifier model")
        dataset = read_boxes(boxes)
        result = classifier_localization(adapter, dataset, methods=methods, show_progress=show_progress)
        return {"eval": evaluation, "model": model, "n": next(iter(result.values()))["n"], "methods": _json_safe(result)}
    if evaluation == "localization" and model != "shapes-captioner":
        raise InputError("'mmcam eval localization' needs --boxes FILE for a classifier, or --model shapes-captioner")
    if model not in supported:
        raise InputError(f"'mmcam eval {evaluation}' supports --model {', '.join(supported)}; got {model!r}")
    adapter = load(model)
    if evaluation == "grounding" and model == "shapes-captioner":
        from .datasets import captioner_scenes
        from .grounding import caption_grounding

        scenes = captioner_scenes(limit)
        methods_result = caption_grounding(
            adapter, scenes, tolerance=tolerance, methods=methods, seed=seed, show_progress=show_progress, total=len(scenes)
        )
        count = len(scenes)
    elif evaluation == "grounding":
        from .answers import answer_grounding
        from .datasets import easy_vqa_items

        items = easy_vqa_items(adapter.scorer.model.vocab, limit, color_or_shape_only=True)
        methods_result = answer_grounding(adapter, items, methods=methods, seed=seed, show_progress=show_progress)
        count = len(items)
    elif evaluation == "localization":
        from .datasets import captioner_scenes
        from .localization import scene_localization

        scenes = captioner_scenes(limit)
        methods_result, count = scene_localization(adapter, scenes, methods=methods, show_progress=show_progress), len(scenes)
    elif evaluation == "sanity":
        methods_result, count = _sanity(adapter, model, limit, methods, seed, show_progress)
    elif model == "shapes-captioner":
        from .datasets import captioner_scenes
        from .grounding import caption_faithfulness

        scenes = captioner_scenes(limit or 50)
        methods_result = caption_faithfulness(
            adapter, scenes, methods=methods, with_road=with_road, seed=seed, show_progress=show_progress, total=len(scenes)
        )
        count = len(scenes)
    else:
        from .answers import answer_faithfulness
        from .datasets import easy_vqa_items

        items = easy_vqa_items(adapter.scorer.model.vocab, limit or 500)
        methods_result = answer_faithfulness(
            adapter, items, methods=methods, with_road=with_road, seed=seed, show_progress=show_progress
        )
        count = len(items)
    return {"eval": evaluation, "model": model, "n": count, "methods": _json_safe(methods_result)}


def _sanity(adapter, model: str, limit: int | None, methods: Sequence[str], seed: int, show_progress: bool):
    from .sanity import captioner_maps, cascading_randomization, vqa_maps

    if model == "shapes-captioner":
        from .datasets import captioner_scenes

        scenes = captioner_scenes(limit or 20)
        maps_of, count = captioner_maps(scenes, methods), len(scenes)
    else:
        from .answers import batch_answer_maps
        from .datasets import easy_vqa_items

        items = easy_vqa_items(adapter.scorer.model.vocab, limit or 32, color_or_shape_only=True)
        run, _ = batch_answer_maps(adapter, items, methods[:1])
        maps_of, count = vqa_maps(items, methods, run.record.output.argmax(dim=1).tolist()), len(items)
    result = cascading_randomization(
        adapter, maps_of, model_of=lambda a: a.scorer.model, seed=seed, show_progress=show_progress
    )
    return result, count


def _json_safe(value: Any) -> Any:
    """nan and inf are not JSON: they become null."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table: one row per method, one column per metric."""
    metrics: list[str] = []
    for scores in result["methods"].values():
        metrics += [metric for metric in scores if metric not in metrics]
    header = f"{result['eval']} of {result['model']} (n={result['n']})\n\n"
    lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, scores in result["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(scores.get(metric)) for metric in metrics) + " |")
    if any(isinstance(value, list) for scores in result["methods"].values() for value in scores.values()):
        lines.append("\nLists: one value per randomisation step, from the output layer down.")
    return header + "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join(_cell(item) for item in value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
