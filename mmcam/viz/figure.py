"""A strip figure: the image, then one overlay per explained word, answer or class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .overlay import overlay


def strip_figure(
    pixels: np.ndarray,
    heatmaps: np.ndarray,
    titles: Sequence[str],
    *,
    suptitle: str | None = None,
    panel_size: float = 2.0,
) -> Figure:
    """A matplotlib figure (no pyplot state): the image, then one overlay per heatmap (T, H, W)
    with its title above (e.g. ``"red\\np=0.98"``)."""
    count = len(heatmaps) + 1
    columns = min(count, 8)
    rows = -(-count // columns)
    aspect = pixels.shape[0] / pixels.shape[1]
    figure = Figure(figsize=(panel_size * columns, (panel_size * aspect + 0.45) * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    axes[0].imshow(pixels)
    axes[0].set_title("image", fontsize=9)
    for axis, heatmap, title in zip(axes[1:], heatmaps, titles, strict=False):
        axis.imshow(overlay(pixels, heatmap))
        axis.set_title(title, fontsize=9)
    for axis in axes:
        axis.axis("off")
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    figure.tight_layout()
    return figure
