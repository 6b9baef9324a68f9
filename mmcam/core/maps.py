"""Map arithmetic: from a gradient record to maps at any size, upsampling, normalisation, and the
``guided_`` variants of every method (the method's map times the magnitude of Guided Backprop).

This is the one place where maps are made from a :class:`~mmcam.core.GradientRecord`; adapters,
explanations and evaluations all call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .methods import METHODS, get_method

if TYPE_CHECKING:
    from .gradcam import GradientRecord

GUIDED_PREFIX = "guided_"
ALL_METHODS = (*METHODS, *(GUIDED_PREFIX + name for name in METHODS))


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


def split_method(name: str) -> tuple[str, bool]:
    """``"guided_hirescam"`` -> ``("hirescam", True)``; unknown names list every method."""
    guided = name.startswith(GUIDED_PREFIX)
    base = name[len(GUIDED_PREFIX) :] if guided else name
    if base not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(ALL_METHODS)}")
    return base, guided


def raw_maps(record: GradientRecord, method: str, *, counterfactual: bool = False, layer_name: str = "the layer") -> Tensor:
    """Unscaled maps (N, T, h, w) of a base ``method`` at the layer's grid; ``counterfactual``
    negates the gradients. Non-finite maps raise: a NaN would otherwise be reported as a peak."""
    gradients = -record.gradients if counterfactual else record.gradients
    maps = get_method(method)(record.activations, gradients)
    if not torch.isfinite(maps).all():
        raise ValueError(
            f"{method} maps of layer {layer_name!r} contain NaN or infinity: the layer's "
            "activations or gradients are not finite (an overflow, e.g. in float16?)"
        )
    return maps


def guided_magnitude(record: GradientRecord) -> Tensor:
    """|Guided Backprop| summed over colour channels, (N, T, H_in, W_in) at the model input."""
    gradients = record.input_gradients
    if gradients is None and record.guided_later is not None:
        gradients = record.guided_later.compute()[0]  # made with guided="lazy": computed now
    if gradients is None:
        raise ValueError("the record has no guided gradients; compute it with guided=True")
    return gradients.abs().sum(dim=2)


def at_size(grid_maps: Tensor, size: tuple[int, int], magnitude: Tensor | None = None) -> Tensor:
    """Native-grid maps (..., h, w) -> normalised maps (..., H, W) at ``size``; with the Guided
    Backprop ``magnitude`` (..., H_in, W_in), the ``guided_`` variant: map x normalised
    magnitude, renormalised."""
    maps = normalize(upsample(grid_maps, size))
    if magnitude is not None:
        maps = normalize(maps * normalize(upsample(magnitude, size)))
    return maps


def maps_at_original_size(
    record: GradientRecord,
    sizes: Sequence[tuple[int, int]],
    method: str,
    *,
    counterfactual: bool = False,
) -> list[np.ndarray]:
    """Per image n, maps (T, H_n, W_n) float32 in [0, 1] at ``sizes[n]`` = (H_n, W_n), for any
    method of :data:`ALL_METHODS` (``guided_`` ones need a record made with ``guided=True``
    or ``"lazy"``)."""
    base, guided = split_method(method)
    raw = raw_maps(record, base, counterfactual=counterfactual)
    magnitude = guided_magnitude(record) if guided else None
    return [
        at_size(raw[n], size, None if magnitude is None else magnitude[n]).numpy().astype(np.float32)
        for n, size in enumerate(sizes)
    ]


def guided_backprop_at_original_size(record: GradientRecord, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """|Guided Backprop| per image at its size, normalised: (T, H, W) float32."""
    magnitude = guided_magnitude(record)
    return [normalize(upsample(magnitude[n], size)).numpy().astype(np.float32) for n, size in enumerate(sizes)]


def guided_gradcam_image(grid_map: Tensor, input_gradient: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Guided Grad-CAM of one target as an image (H, W, C) float32: Guided Backprop (C, h, w)
    upsampled to ``size`` times the base method's normalised map (from ``grid_map`` (h, w)).
    Multiplied in place, so a large photo holds one (C, H, W) buffer and one map."""
    product = upsample(input_gradient, size)
    product.mul_(at_size(grid_map, size).unsqueeze(0))
    return product.permute(1, 2, 0).numpy()
