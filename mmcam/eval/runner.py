"""One entry point per evaluation, returning the JSON-ready result that ``mmcam eval`` prints:
``{"eval", "model", "n", "methods": {METHOD: {METRIC: VALUE}}}``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from ..registry import load

SUPPORTED = {  # built-in data (generated scenes, easy-VQA's test split); any model takes --data
    "grounding": ("shapes-captioner", "easy-vqa"),
    "faithfulness": ("easy-vqa", "shapes-captioner"),
    "sanity": ("shapes-captioner", "easy-vqa"),
    "localization": ("shapes-captioner",),
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
    data: str | None = None,
) -> dict[str, Any]:
    """Run ``evaluation`` on ``model``: on the items of ``data`` (a JSON lines file, see
    :mod:`mmcam.eval.items`; any model), or on the built-in data of a shipped model."""
    if data is not None:
        if boxes:
            raise InputError("give --data FILE.jsonl or --boxes FILE, not both")
        return _on_data(evaluation, model, data, limit=limit, methods=methods, tolerance=tolerance, seed=seed, show_progress=show_progress, with_road=with_road)
    supported = SUPPORTED.get(evaluation, ())
    if evaluation == "localization" and boxes:
        from .localization import classifier_localization, read_boxes

        adapter = load(model)
        if getattr(adapter, "kind", None) != "classify":
            raise InputError("--boxes localization needs a classifier model")
        dataset = read_boxes(boxes)
        result = classifier_localization(adapter, dataset, methods=methods, show_progress=show_progress)
        return {"eval": evaluation, "model": model, "n": next(iter(result.values()))["n"], "methods": _json_safe(result)}
    if model not in supported:
        boxes_hint = " (a classifier: --boxes FILE)" if evaluation == "localization" else ""
        raise InputError(
            f"'mmcam eval {evaluation} --model {model}' needs --data FILE.jsonl{boxes_hint}; "
            f"built-in data exists for --model {', '.join(supported)}"
        )
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
    return cascading_randomization(adapter, maps_of, seed=seed, show_progress=show_progress), count


def _on_data(evaluation: str, model: str, data: str, *, limit: int | None, methods: Sequence[str], tolerance: int, seed: int, show_progress: bool, with_road: bool) -> dict[str, Any]:
    """An evaluation of any model on a data file: every line is checked (first alone, then
    against the model) before any map is made."""
    from . import any_model
    from .items import check_against_model, read_items

    adapter = load(model)
    need_boxes = evaluation in ("grounding", "localization")
    items = read_items(data, adapter.kind, need_boxes=need_boxes)[:limit]
    check_against_model(items, adapter, data)
    if evaluation == "sanity":
        result = any_model.sanity_on_items(adapter, items, methods=methods, seed=seed, show_progress=show_progress)
    elif evaluation == "faithfulness":
        result = any_model.faithfulness_on_items(adapter, items, methods=methods, with_road=with_road, seed=seed, show_progress=show_progress)
    elif evaluation == "grounding":
        result = any_model.grounding_on_items(adapter, items, methods=methods, tolerance=tolerance, seed=seed, show_progress=show_progress)
    else:
        result = any_model.localization_on_items(adapter, items, methods=methods, show_progress=show_progress)
    return {"eval": evaluation, "model": model, "n": len(items), "methods": _json_safe(result)}


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
