"""Map arithmetic after a method: upsampling and normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling (``align_corners=False``) of maps (..., h, w) to (..., H, W)."""
    leading = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    resized = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return resized.reshape(*leading, *resized.shape[-2:])


def normalize(maps: Tensor) -> Tensor:
    """Scale each map (..., H, W) to [0, 1] by its maximum; an all-zero map stays zero.

    Maps are non-negative after the methods' ReLU, so dividing by the maximum keeps "no
    evidence" at zero. Returns a new tensor.
    """
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    scaled = maps / torch.where(peak > 0, peak, torch.ones_like(peak))
    return scaled.clamp(min=0.0, max=1.0)
