"""An :class:`~mmcam.explanation.Explanation` as a viewer item (for notebooks and the demo)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..viz.overlay import guided_image
from .items import ViewItem, ViewTarget

if TYPE_CHECKING:
    from ..explanation import Explanation


def item_from_explanation(explanation: Explanation, name: str | None = None) -> ViewItem:
    """Every map, score and word of ``explanation`` as one :class:`ViewItem`."""
    info = explanation.info
    logprobs = _logprobs(explanation)
    attributions = info.get("word_attributions")
    targets = []
    for t, label in enumerate(explanation.labels):
        maps = {"heatmap": explanation.heatmaps[t]}
        if explanation.counterfactual is not None:
            maps["counterfactual"] = explanation.counterfactual[t]
        if explanation.attention is not None:
            maps["attention"] = explanation.attention[t]
        box = explanation.bbox(t)
        targets.append(
            ViewTarget(
                label=str(label),
                score=float(explanation.scores[t]),
                logprob=logprobs[t],
                peak_xy=explanation.peak_xy(t) if box is not None else None,
                bbox=box,
                maps=maps,
                guided=guided_image(explanation.guided[t]) if explanation.guided is not None else None,
                word_attributions=[float(value) for value in np.asarray(attributions[t])] if attributions is not None and t < len(attributions) else None,
            )
        )
    _attach_contrasts(explanation, targets)
    source = explanation.image.source
    return ViewItem(
        name=name or info.get("title") or (Path(source).name if source else explanation.kind),
        kind=explanation.kind,
        size=explanation.image.size,
        pixels=explanation.image.pixels,
        source=source,
        model=explanation.model,
        layer=explanation.layer,
        method=explanation.method,
        text=str(info.get("caption") or info.get("question") or ""),
        answer=info.get("answer"),
        question_words=list(info.get("question_words", [])),
        targets=targets,
    )


def _logprobs(explanation: Explanation) -> list[float | None]:
    info = explanation.info
    if explanation.kind == "caption":
        return [float(value) for value in info["logprobs"]]
    if "probabilities" in info:
        return [math.log(p) if p and p > 0 else None for p in info["probabilities"]]
    by_index = {p["index"]: p["probability"] for p in info.get("predictions", [])}
    return [math.log(by_index[index]) if by_index.get(index) else None for index in explanation.indices]


def _attach_contrasts(explanation: Explanation, targets: list[ViewTarget]) -> None:
    """A caption's contrasts (one per explained word, its runner-up) go to their words; other
    contrasts (a VQA "red vs blue") become extra targets."""
    contrasts = explanation.contrasts
    if contrasts is None:
        return
    labels = explanation.contrast_labels or [f"contrast {n}" for n in range(len(contrasts))]
    if explanation.kind == "caption" and len(contrasts) == len(targets):
        for target, heatmap in zip(targets, contrasts, strict=True):
            target.maps["contrast"] = np.asarray(heatmap)
        return
    for label, heatmap in zip(labels, contrasts, strict=True):
        targets.append(ViewTarget(label=str(label).replace("-vs-", " vs "), maps={"heatmap": np.asarray(heatmap)}, extra=True))
