"""Averages of per-target metric values into the numbers an evaluation reports."""

from __future__ import annotations

import numpy as np


def summarise(metrics: dict[str, list[float]]) -> dict[str, float]:
    """Per metric, the mean of its defined (non-nan) values; ``inside_outside`` ratios take the
    median instead (a map that is zero outside the box gives inf). A rank correlation
    (``..._spearman``) also reports how many values were undefined (``n_undefined_...``: a
    constant map, or no change under occlusion); ``n`` counts the values."""
    summary: dict[str, float] = {}
    for metric, items in metrics.items():
        array = np.asarray(items, dtype=np.float64)
        defined = array[~np.isnan(array)]
        if metric.startswith("inside_outside"):
            summary[metric] = float(np.median(defined)) if defined.size else float("nan")
        else:
            summary[metric] = float(defined.mean()) if defined.size else float("nan")
        if metric.endswith("spearman"):
            summary[f"n_undefined_{metric}"] = int(array.size - defined.size)
    summary["n"] = len(next(iter(metrics.values()))) if metrics else 0
    return summary
