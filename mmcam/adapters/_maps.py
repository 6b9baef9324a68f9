"""From a gradient record to per-image maps at each image's original size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..core import GradCAM, GradientRecord
from ..core.maps import normalize, upsample


def maps_at_original_size(
    cam: GradCAM,
    record: GradientRecord,
    sizes: Sequence[tuple[int, int]],
    *,
    method: str | None = None,
    counterfactual: bool = False,
) -> list[np.ndarray]:
    """Per image n, maps (T, H_n, W_n) float32 in [0, 1] at ``sizes[n]`` = (H_n, W_n)."""
    raw = cam.maps(record, method=method, counterfactual=counterfactual, upsample=False, normalize=False)
    return [normalize(upsample(raw[n], size)).numpy().astype(np.float32) for n, size in enumerate(sizes)]


def guided_at_original_size(
    record: GradientRecord, heatmaps: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Guided Grad-CAM per image: Guided Backprop (T, C, h, w) upsampled to the image's size,
    times its Grad-CAM maps (T, H, W); returned as (T, H, W, C) float32."""
    if record.input_gradients is None:
        raise ValueError("the record has no guided gradients; compute it with guided=True")
    guided = []
    for n, maps in enumerate(heatmaps):
        backprop = upsample(record.input_gradients[n], maps.shape[-2:])
        product = backprop * torch.from_numpy(maps).unsqueeze(1)
        guided.append(product.permute(0, 2, 3, 1).numpy().astype(np.float32))
    return guided
