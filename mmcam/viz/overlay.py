"""Heatmap overlays and Guided Grad-CAM images as RGB uint8 arrays."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .._files import write_atomic


def overlay(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heatmap (H, W), coloured with ``cmap``, over RGB ``pixels`` (H, W, 3)."""
    if heatmap.shape != pixels.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {pixels.shape[:2]} sizes differ")
    coloured = colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * pixels.astype(np.float64) + alpha * coloured
    return blended.round().clip(0, 255).astype(np.uint8)


def guided_image(guided: np.ndarray) -> np.ndarray:
    """Guided (Grad-CAM) gradients (H, W, 3) shown as an image: centred on grey, scaled by
    their standard deviation (0.1 per std), clipped."""
    centred = guided - guided.mean()
    spread = centred.std()
    scaled = 0.5 + 0.1 * centred / spread if spread > 0 else np.full_like(centred, 0.5)
    return (scaled.clip(0, 1) * 255).round().astype(np.uint8)


def save_png(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    """Write RGB uint8 ``pixels`` as a PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))
