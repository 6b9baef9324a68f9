"""The one per-batch function every engine runs: decoded items -> Parquet rows, one per item
and target (an item that fails: one error row), from one forward and one batched backward per
minibatch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..batch import error_line
from ..core.maps import split_method
from ..explanation import Explanation
from .items import DecodedItem
from .task import DatasetTask

COLUMNS = (
    "item", "image", "text", "answer", "target", "target_index", "word_index", "score", "logprob",
    "probability", "peak_x", "peak_y", "bbox", "grid_h", "grid_w", "map", "method", "layer", "model", "error",
)


def explain_rows(adapter, task: DatasetTask, batch: Sequence[DecodedItem]) -> list[dict[str, Any]]:
    """Rows of a minibatch, in the items' order. Items are explained together; when that
    fails, one at a time, so a bad item becomes its error row and the others still succeed."""
    rows: dict[int, list[dict[str, Any]]] = {}
    good = []
    for decoded in batch:
        if decoded.error is not None:
            rows[decoded.item.item] = [error_row(decoded, decoded.error)]
        else:
            good.append(decoded)
    explain = _explain_captions if task.kind == "caption" else _explain_questions
    for group in _groups(task, good):
        try:
            explained = explain(adapter, task, group)
        except Exception:  # find the failing items one by one
            explained = []
            for decoded in group:
                try:
                    explained += explain(adapter, task, [decoded])
                except Exception as error:  # reported as this item's error row
                    rows[decoded.item.item] = [error_row(decoded, error_line(error))]
                    continue
        for decoded, explanation in explained:
            rows[decoded.item.item] = target_rows(decoded, explanation)
    return [row for decoded in batch for row in rows[decoded.item.item]]


def _groups(task: DatasetTask, items: list[DecodedItem]) -> list[list[DecodedItem]]:
    """Items that can share a pass: VQA items explaining as many answers as each other."""
    if task.kind == "caption":
        return [items] if items else []
    groups: dict[int, list[DecodedItem]] = {}
    for decoded in items:
        groups.setdefault(len(_answers(task, decoded) or [None] * task.top), []).append(decoded)
    return list(groups.values())


def _answers(task: DatasetTask, decoded: DecodedItem) -> list[str] | None:
    return [decoded.item.answer] if decoded.item.answer else (list(task.answers) if task.answers else None)


Explained = list[tuple[DecodedItem, Explanation]]


def _explain_captions(adapter, task: DatasetTask, group: list[DecodedItem]) -> Explained:
    explanations = adapter.explain_batch(
        [decoded.image for decoded in group],
        [decoded.item.text for decoded in group],
        words=list(task.words) if task.words else None,
        method=_grid_method(adapter, task),
        beam_size=task.beam,
        score=task.score,
        guided=False,
        counterfactual=False,
        contrast=False,
    )
    return list(zip(group, explanations, strict=True))


def _explain_questions(adapter, task: DatasetTask, group: list[DecodedItem]) -> Explained:
    explanations = adapter.explain_batch(
        [decoded.image for decoded in group],
        [decoded.item.text for decoded in group],
        [_answers(task, decoded) for decoded in group],
        top=task.top,
        method=_grid_method(adapter, task),
        guided=False,
        counterfactual=False,
    )
    return list(zip(group, explanations, strict=True))


def _grid_method(adapter, task: DatasetTask) -> str:
    """The method whose native-grid map the rows hold: a ``guided_X`` method's grid map is
    X's (Guided Backprop multiplies it at full size only), so the Guided pass is skipped and
    the rows name X."""
    return split_method(task.method or adapter.default_method)[0]


def target_rows(decoded: DecodedItem, explanation: Explanation) -> list[dict[str, Any]]:
    """One row per target: its label, position, score, peak and box in the original image,
    and the map at the layer's native grid (row-major float32)."""
    info = explanation.info
    caption = explanation.kind == "caption"
    rows = []
    for t, (label, index, score) in enumerate(zip(explanation.labels, explanation.indices, explanation.scores, strict=True)):
        peak, box = explanation.place(t)
        grid = np.asarray(explanation.grid_maps[t], dtype=np.float32)
        rows.append({
            **_head(decoded),
            "text": info["caption"] if caption else info["question"],
            "answer": None if caption else info["answer"],
            "target": label,
            "target_index": t,
            "word_index": int(index),
            "score": float(score),
            "logprob": float(info["logprobs"][t]) if caption else None,
            "probability": None if caption else float(info["probabilities"][t]),
            "peak_x": None if peak is None else int(peak[0]),
            "peak_y": None if peak is None else int(peak[1]),
            "bbox": None if box is None else [int(value) for value in box],
            "grid_h": int(grid.shape[0]),
            "grid_w": int(grid.shape[1]),
            "map": grid.ravel(),
            "method": explanation.method,
            "layer": explanation.layer,
            "model": explanation.model,
            "error": None,
        })
    return rows


def error_row(decoded: DecodedItem, error: str) -> dict[str, Any]:
    """The one row of a failed item: its number, image, text and error."""
    return {**dict.fromkeys(COLUMNS), **_head(decoded), "text": decoded.item.text, "error": error}


def _head(decoded: DecodedItem) -> dict[str, Any]:
    return {"item": decoded.item.item, "image": decoded.item.image}


