"""The paper's weakly-supervised localization: threshold, largest segment, bounding box."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PAPER_THRESHOLD = 0.15


def peak_xy(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) pixel coordinates of the map's maximum (first one in row-major order on ties)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def localization_box(
    heatmap: np.ndarray, threshold: float = PAPER_THRESHOLD
) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` (inclusive pixel coordinates) of the largest
    8-connected segment of ``heatmap >= threshold * max`` (Selvaraju et al., sec. 4.1, 15%).

    Returns ``None`` for a map with no positive value.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heatmap.shape}")
    peak = heatmap.max(initial=0.0)
    if not np.isfinite(peak) or peak <= 0:
        return None
    mask = heatmap >= threshold * peak
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    rows = np.flatnonzero(largest.any(axis=1))
    cols = np.flatnonzero(largest.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])
