"""A strip figure: the image, then one overlay per explained word, answer or class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .overlay import overlay


def strip_figure(
    pixels: np.ndarray,
    heatmaps: np.ndarray,
    titles: Sequence[str],
    *,
    suptitle: str | None = None,
    panel_size: float = 2.0,
    panels: Sequence[np.ndarray] | None = None,
    word_scores: Sequence[tuple[str, float]] | None = None,
) -> Figure:
    """A matplotlib figure (no pyplot state): the image, then one overlay per heatmap (T, H, W)
    with its title above (e.g. ``"red\\np=0.98"``). ``panels`` replaces the overlays with
    ready RGB images (Guided Grad-CAM); ``word_scores`` writes words below the strip, coloured
    by their signed scores (question-word attributions: red helps, blue hurts)."""
    count = len(heatmaps) + 1
    columns = min(count, 8)
    rows = -(-count // columns)
    aspect = pixels.shape[0] / pixels.shape[1]
    extra = 0.5 if word_scores else 0.0
    figure = Figure(figsize=(panel_size * columns, (panel_size * aspect + 0.45) * rows + extra))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    axes[0].imshow(pixels)
    axes[0].set_title("image", fontsize=9)
    images = panels if panels is not None else [overlay(pixels, heatmap) for heatmap in heatmaps]
    for axis, image, title in zip(axes[1:], images, titles, strict=False):
        axis.imshow(image)
        axis.set_title(title, fontsize=9)
    for axis in axes:
        axis.axis("off")
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    top = 1 - 0.35 / figure.get_figheight() if suptitle else 1
    figure.tight_layout(rect=(0, extra / figure.get_figheight(), 1, top))
    if word_scores:
        _draw_words(figure, word_scores)
    return figure


def _draw_words(figure: Figure, word_scores: Sequence[tuple[str, float]]) -> None:
    """Words in a row at the bottom, coloured red (positive) to blue (negative)."""
    scale = max((abs(score) for _, score in word_scores), default=0.0) or 1.0
    colours = colormaps["coolwarm"]
    step = 0.9 / max(len(word_scores), 1)
    for index, (word, score) in enumerate(word_scores):
        figure.text(
            0.05 + index * step,
            0.03,
            f"{word}\n{score:+.2f}",
            fontsize=9,
            ha="left",
            va="bottom",
            bbox={"facecolor": colours(0.5 + 0.5 * score / scale), "edgecolor": "none", "pad": 2},
        )
