"""Heatmap overlays and Guided Grad-CAM images as RGB uint8 arrays."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .._files import write_atomic


_ROWS = 512  # rows blended at a time: a large photo never needs a float copy of itself


def overlay(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heatmap (H, W), coloured with ``cmap``, over RGB ``pixels`` (H, W, 3).

    Colours come from the colour map's 256-entry table, indexed as matplotlib indexes it."""
    if heatmap.shape != pixels.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {pixels.shape[:2]} sizes differ")
    table = colour_table(cmap)
    blended = np.empty(pixels.shape, dtype=np.uint8)
    for start in range(0, heatmap.shape[0], _ROWS):
        rows = slice(start, start + _ROWS)
        index = np.clip(np.clip(heatmap[rows], 0, 1) * len(table), 0, len(table) - 1).astype(np.intp)
        mixed = (1 - alpha) * pixels[rows].astype(np.float64) + alpha * table[index]
        blended[rows] = mixed.round().clip(0, 255)
    return blended


def colour_table(cmap: str = "jet") -> np.ndarray:
    """The colour map's RGB table (N, 3) in 0-255."""
    colours = colormaps[cmap]
    return colours(np.arange(colours.N))[:, :3] * 255


def guided_image(guided: np.ndarray) -> np.ndarray:
    """Guided (Grad-CAM) gradients (H, W, 3) shown as an image: centred on grey, scaled by
    their standard deviation (0.1 per std), clipped."""
    mean = float(guided.mean(dtype=np.float64))
    spread = float(guided.std(dtype=np.float64))
    shown = np.empty(guided.shape, dtype=np.uint8)
    for start in range(0, guided.shape[0], _ROWS):
        rows = slice(start, start + _ROWS)
        scaled = 0.5 + 0.1 * (guided[rows] - mean) / spread if spread > 0 else np.full(guided[rows].shape, 0.5)
        shown[rows] = (scaled.clip(0, 1) * 255).round()
    return shown


def save_png(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    """Write RGB uint8 ``pixels`` as a PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))
