"""From a gradient record to per-image maps at each image's original size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..core import GradCAM, GradientRecord
from ..core.maps import normalize, upsample
from ..core.methods import METHODS
from ..errors import InputError

GUIDED_PREFIX = "guided_"
ALL_METHODS = (*METHODS, *(GUIDED_PREFIX + name for name in METHODS))


def split_method(name: str) -> tuple[str, bool]:
    """``"guided_hirescam"`` -> ``("hirescam", True)``; unknown names list every method."""
    guided = name.startswith(GUIDED_PREFIX)
    base = name[len(GUIDED_PREFIX) :] if guided else name
    if base not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(ALL_METHODS)}")
    return base, guided


def maps_at_original_size(
    cam: GradCAM,
    record: GradientRecord,
    sizes: Sequence[tuple[int, int]],
    *,
    method: str | None = None,
    counterfactual: bool = False,
) -> list[np.ndarray]:
    """Per image n, maps (T, H_n, W_n) float32 in [0, 1] at ``sizes[n]`` = (H_n, W_n).

    A ``guided_`` method is the base method's map times the magnitude of Guided Backprop (summed
    over colour channels), renormalised: Guided Grad-CAM as a single-channel heatmap."""
    base, guided = split_method(method or cam.method)
    raw = cam.maps(record, method=base, counterfactual=counterfactual, upsample=False, normalize=False)
    maps = [normalize(upsample(raw[n], size)) for n, size in enumerate(sizes)]
    if guided:
        maps = [normalize(heatmap * torch.from_numpy(magnitude)) for heatmap, magnitude in zip(maps, guided_backprop_at_original_size(record, sizes), strict=True)]
    return [heatmap.numpy().astype(np.float32) for heatmap in maps]


def guided_backprop_at_original_size(record: GradientRecord, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """|Guided Backprop| summed over colour channels, at each image's size, normalised: (T, H, W)."""
    if record.input_gradients is None:
        raise ValueError("the record has no guided gradients; compute it with guided=True")
    magnitude = record.input_gradients.abs().sum(dim=2)  # (N, T, h, w)
    return [normalize(upsample(magnitude[n], size)).numpy().astype(np.float32) for n, size in enumerate(sizes)]


def guided_at_original_size(
    cam: GradCAM, record: GradientRecord, sizes: Sequence[tuple[int, int]], *, method: str | None = None
) -> list[np.ndarray]:
    """Guided Grad-CAM per image: Guided Backprop (T, C, h, w) upsampled to the image's size,
    times the (base, unguided) method's maps (T, H, W); returned as (T, H, W, C) float32."""
    if record.input_gradients is None:
        raise ValueError("the record has no guided gradients; compute it with guided=True")
    base, _ = split_method(method or cam.method)
    guided = []
    for n, maps in enumerate(maps_at_original_size(cam, record, sizes, method=base)):
        backprop = upsample(record.input_gradients[n], maps.shape[-2:])
        product = backprop * torch.from_numpy(maps).unsqueeze(1)
        guided.append(product.permute(0, 2, 3, 1).numpy().astype(np.float32))
    return guided
