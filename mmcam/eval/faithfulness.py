"""Faithfulness: does a map reflect what the model uses? Occlusion rank correlation (the
Grad-CAM paper's measure), deletion / insertion curves (RISE, Petsiuk et al. 2018) and ROAD
(Rong et al. 2022). All are functions of a scoring callable, one image and one map, and score
every perturbed image of a curve in one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]  # images (B, C, H, W) -> target scores (B,)


def blur(image: Tensor, sigma: float = 5.0) -> Tensor:
    """Gaussian blur of an image (C, H, W), reflecting at the borders."""
    radius = max(1, int(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)[0]


def occlusion_map(score: ScoreFn, image: Tensor, grid: int = 7, fill: str = "zero") -> np.ndarray:
    """Drop of the score when each cell of a ``grid`` x ``grid`` partition is occluded: (grid,
    grid). ``fill`` is ``"zero"`` (the paper's solid patch at input value 0), ``"mean"`` (the
    image's mean colour) or ``"blur"`` (the same cell of a blurred copy: no new edges)."""
    height, width = image.shape[-2:]
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    filler = _filler(image, fill)
    occluded = image.repeat(grid * grid, 1, 1, 1)
    for i in range(grid):
        for j in range(grid):
            cell = (slice(None), slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1]))
            occluded[(i * grid + j, *cell)] = filler[cell]
    with torch.no_grad():
        scores = score(torch.cat([image[None], occluded]))
    return (scores[0] - scores[1:]).reshape(grid, grid).numpy()


def _filler(image: Tensor, fill: str) -> Tensor:
    if fill == "zero":
        return torch.zeros_like(image)
    if fill == "mean":
        return image.mean(dim=(-2, -1), keepdim=True).expand_as(image).clone()
    if fill == "blur":
        return blur(image)
    raise ValueError(f"unknown fill {fill!r}; choose zero, mean or blur")


def pool_to_grid(heatmap: np.ndarray, grid: int) -> np.ndarray:
    """Mean of the map over each cell of a ``grid`` x ``grid`` partition (as in occlusion)."""
    height, width = heatmap.shape
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    return np.array(
        [[heatmap[rows[i] : rows[i + 1], cols[j] : cols[j + 1]].mean() for j in range(grid)] for i in range(grid)]
    )


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (ties get average ranks); nan when either is
    constant."""
    a, b = np.ravel(first), np.ravel(second)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def _pixel_order(heatmap: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pixel indices from most to least relevant; ties broken at random (seeded) so a flat map
    is not read in raster order."""
    flat = np.ravel(heatmap)
    jitter = (rng or np.random.default_rng(0)).random(flat.size)
    return np.lexsort((jitter, -flat))


def deletion_insertion(
    score: ScoreFn,
    image: Tensor,
    heatmap: np.ndarray,
    *,
    steps: int = 16,
    fill: str = "zero",
    insertion: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """RISE deletion and insertion: pixels in the map's order are set to ``fill`` (deletion;
    ``"zero"`` as in RISE, or the image's ``"mean"`` colour) or copied onto a blurred image
    (insertion), in ``steps`` equal chunks; the score is read after each chunk and the curves'
    areas over the fraction of pixels (trapezoid rule) are returned with the curves (steps + 1,).
    Low deletion and high insertion AUC mean a faithful map. With ``insertion=False`` only the
    deletion curve is scored (the insertion AUC is nan)."""
    channels, height, width = image.shape
    order = torch.from_numpy(_pixel_order(heatmap, rng).copy())
    bounds = np.linspace(0, height * width, steps + 1).round().astype(int)
    blurred = blur(image)
    filler = _filler(image, fill)
    deleted, inserted = [], []
    for count in bounds:
        keep = torch.ones(height * width, dtype=image.dtype)
        keep[order[:count]] = 0
        keep = keep.view(1, height, width)
        deleted.append(image * keep + filler * (1 - keep))
        if insertion:
            inserted.append(image * (1 - keep) + blurred * keep)
    with torch.no_grad():
        curves = score(torch.stack(deleted + inserted)).numpy()
    deletion_curve, insertion_curve = curves[: steps + 1], curves[steps + 1 :]
    fractions = bounds / (height * width)
    insertion_auc = float(np.trapezoid(insertion_curve, fractions)) if insertion else float("nan")
    return float(np.trapezoid(deletion_curve, fractions)), insertion_auc, deletion_curve, insertion_curve


_NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6), (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))


def _neighbour_imputation(image: Tensor, removed: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> Tensor:
    """Noisy linear imputation (ROAD): each removed pixel becomes the weighted mean of its
    neighbours inside the image (direct 1/6, diagonal 1/12), solved as one sparse linear system
    over all removed pixels, plus Gaussian noise (std ``noise``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    height, width = removed.shape
    positions = np.argwhere(removed)
    count = len(positions)
    if count == 0:
        return image.clone()
    index = -np.ones(removed.shape, dtype=np.int64)
    index[removed] = np.arange(count)
    pixels = image.numpy().reshape(image.shape[0], height, width)
    rows, cols, data = [np.arange(count)], [np.arange(count)], []
    diagonal = np.zeros(count)
    right = np.zeros((count, image.shape[0]))
    for dy, dx, weight in _NEIGHBOURS:
        ny, nx = positions[:, 0] + dy, positions[:, 1] + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        diagonal += weight * inside
        neighbour_removed = np.zeros(count, dtype=bool)
        neighbour_removed[inside] = removed[ny[inside], nx[inside]]
        known = inside & ~neighbour_removed
        right[known] += weight * pixels[:, ny[known], nx[known]].T
        unknown = np.flatnonzero(neighbour_removed)
        rows.append(unknown)
        cols.append(index[ny[unknown], nx[unknown]])
        data.append(np.full(unknown.size, -weight))
    values = np.concatenate([diagonal, *data])
    system = coo_matrix((values, (np.concatenate(rows), np.concatenate(cols))), shape=(count, count)).tocsc()
    solved = np.asarray(spsolve(system, right)).reshape(count, -1)
    result = pixels.copy()
    result[:, positions[:, 0], positions[:, 1]] = (solved + rng.normal(0, noise, solved.shape)).T
    return torch.from_numpy(result).to(image.dtype)


def road(
    score: ScoreFn,
    image: Tensor,
    heatmap: np.ndarray,
    *,
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """ROAD (Rong et al. 2022): mean score after removing the most relevant (MoRF) and the least
    relevant (LeRF) fractions of pixels, imputed by noisy linear imputation. A faithful map has
    a low MoRF and a high LeRF; returned as (morf, lerf)."""
    rng = rng or np.random.default_rng(0)
    height, width = heatmap.shape
    order = _pixel_order(heatmap, rng)
    batches = []
    for most_first in (True, False):
        ranked = order if most_first else order[::-1]
        for fraction in fractions:
            removed = np.zeros(height * width, dtype=bool)
            removed[ranked[: int(round(fraction * height * width))]] = True
            batches.append(_neighbour_imputation(image, removed.reshape(height, width), rng))
    with torch.no_grad():
        scores = score(torch.stack(batches)).numpy()
    half = len(fractions)
    return float(scores[:half].mean()), float(scores[half:].mean())


def grow_background_mask(image: np.ndarray, threshold: float = 60.0, grow: int = 3) -> np.ndarray:
    """Pixels far (Euclidean RGB distance > ``threshold``) from the background colour, taken as
    the median of the image border, dilated by ``grow`` px: the shape mask of a plain-background
    image (H, W, 3) uint8."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float64)
    background = np.median(border, axis=0)
    distance = np.linalg.norm(image.astype(np.float64) - background, axis=-1)
    mask = distance > threshold
    if grow > 0:
        mask = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool), iterations=grow)
    return mask


def faithfulness_of_maps(
    score: ScoreFn,
    probability: ScoreFn,
    image: Tensor,
    maps: dict[str, np.ndarray],
    *,
    grid: int = 7,
    steps: int = 16,
    with_road: bool = True,
    rng: np.random.Generator | None = None,
) -> dict[str, dict[str, float]]:
    """Every faithfulness measure for each named map (H, W) of one image and one target:
    ``occlusion_spearman`` / ``occlusion_blur_spearman`` against the drop of ``score`` (the
    paper's pre-softmax score or log-prob) under zero / blurred occlusion, ``deletion_auc``,
    ``deletion_mean_auc``, ``insertion_auc`` and ROAD's ``road_morf`` / ``road_lerf`` on
    ``probability``. Identical maps (e.g. Grad-CAM and HiResCAM when the gradient is uniform)
    are scored once."""
    rng = rng or np.random.default_rng(0)
    occlusions = {fill: occlusion_map(score, image, grid, fill) for fill in ("zero", "blur")}
    done: dict[bytes, dict[str, float]] = {}
    results = {}
    for name, heatmap in maps.items():
        key = np.ascontiguousarray(heatmap, dtype=np.float32).tobytes()
        if key not in done:
            pooled = pool_to_grid(heatmap, grid)
            deletion, insertion, _, _ = deletion_insertion(probability, image, heatmap, steps=steps, rng=rng)
            deletion_mean, _, _, _ = deletion_insertion(probability, image, heatmap, steps=steps, fill="mean", insertion=False, rng=rng)
            scores = {
                "occlusion_spearman": rank_correlation(pooled, occlusions["zero"]),
                "occlusion_blur_spearman": rank_correlation(pooled, occlusions["blur"]),
                "deletion_auc": deletion,
                "deletion_mean_auc": deletion_mean,
                "insertion_auc": insertion,
            }
            if with_road:
                scores["road_morf"], scores["road_lerf"] = road(probability, image, heatmap, rng=rng)
            done[key] = scores
        results[name] = done[key]
    return results
