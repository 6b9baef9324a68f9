"""Localization metrics of one heatmap against ground truth, and baseline maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]


def grow_box(box: Box, tolerance: int, shape: tuple[int, int]) -> Box:
    """``box`` (x0, y0, x1, y1) grown by ``tolerance`` pixels on every side, clipped to the image."""
    height, width = shape
    x0, y0, x1, y1 = box
    return max(0, x0 - tolerance), max(0, y0 - tolerance), min(width - 1, x1 + tolerance), min(height - 1, y1 + tolerance)


def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of an inclusive box."""
    mask = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def grow_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` dilated by ``pixels`` (a square neighbourhood)."""
    if pixels <= 0:
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool), iterations=pixels)


def pointing_hit(heatmap: np.ndarray, region: np.ndarray) -> bool:
    """Pointing game: is the map's maximum inside ``region`` (H, W) bool? A map with no positive
    value points nowhere (a miss). Ties count as a hit when any maximum is inside."""
    peak = heatmap.max()
    if not np.isfinite(peak) or peak <= 0:
        return False
    return bool(region[heatmap >= peak].any())


def energy_inside(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's mass inside ``region`` (energy-based pointing); 0 for an empty map."""
    total = float(heatmap.sum())
    return float(heatmap[region].sum()) / total if total > 0 else 0.0


def inside_outside_ratio(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Mean of the map inside ``region`` over its mean outside (paper, sec. 8.1); a uniform map
    scores 1. Returns inf when the outside is zero and the inside is not, nan for an empty map."""
    inside, outside = float(heatmap[region].mean()), float(heatmap[~region].mean())
    if outside == 0:
        return float("inf") if inside > 0 else float("nan")
    return inside / outside


def center_map(shape: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """A centred Gaussian (the centre-bias baseline): its peak is the image centre."""
    height, width = shape
    ys = (np.arange(height) - (height - 1) / 2) / (sigma_fraction * height)
    xs = (np.arange(width) - (width - 1) / 2) / (sigma_fraction * width)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)


def uniform_map(shape: tuple[int, int]) -> np.ndarray:
    """A constant map: it scores the region's area share on energy, 1 on inside/outside; its
    pointing is scored as a uniformly random point (the region's area share), see
    :func:`expected_uniform_pointing`."""
    return np.ones(shape, dtype=np.float32)


def expected_uniform_pointing(region: np.ndarray) -> float:
    """Hit rate of a uniformly random point: the region's share of the image."""
    return float(region.mean())


def random_map(shape: tuple[int, int], rng: np.random.Generator, grid: int = 7) -> np.ndarray:
    """A random coarse map (``grid`` x ``grid`` uniform values) upsampled bilinearly: a baseline
    with the smoothness of a CAM but no information."""
    import torch

    from ..core.maps import upsample

    coarse = torch.from_numpy(rng.random((grid, grid)).astype(np.float32))
    return upsample(coarse, shape).numpy()
