"""Images for a transformers model: its image processor's size and normalisation, no cropping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from ...io import to_tensor


@dataclass(frozen=True)
class ImageSettings:
    """What the model's image processor would do, minus the crop: resize to ``size`` (h, w),
    scale to ``scale`` x [0, 255], subtract ``mean`` and divide by ``std`` per channel.

    Processors that crop (ConvNeXt's ``crop_pct``, CLIP's centre crop) or keep the aspect ratio
    (ViLT) are read as a plain resize to the model's input size, so each map covers the whole
    original image and is stretched back onto it.
    """

    size: tuple[int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    scale: float = 1 / 255

    def tensor(self, pixels: np.ndarray) -> Tensor:
        """RGB uint8 (H, W, 3) -> the model's pixel values (3, h, w)."""
        image = to_tensor(pixels, self.size) * (255 * self.scale)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=image.dtype)[:, None, None]
            std = torch.tensor(self.std, dtype=image.dtype)[:, None, None]
            image = (image - mean) / std
        return image

    @classmethod
    def from_processor(cls, processor: Any, fallback_size: int | None = None) -> ImageSettings:
        """Settings of a transformers image processor; ``fallback_size`` (the vision config's
        ``image_size``) when the processor names no size."""
        size = _input_size(processor, fallback_size)
        normalize = getattr(processor, "do_normalize", True)
        mean = getattr(processor, "image_mean", None) if normalize else None
        std = getattr(processor, "image_std", None) if normalize else None
        scale = float(getattr(processor, "rescale_factor", 1 / 255)) if getattr(processor, "do_rescale", True) else 1.0
        return cls(
            size,
            None if mean is None else tuple(float(value) for value in _per_channel(mean)),
            None if std is None else tuple(float(value) for value in _per_channel(std)),
            scale,
        )


def _input_size(processor: Any, fallback_size: int | None) -> tuple[int, int]:
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and _field(crop, "height") and _field(crop, "width"):
        return int(_field(crop, "height")), int(_field(crop, "width"))
    size = getattr(processor, "size", None)
    if isinstance(size, int):
        return size, size
    if _field(size, "height") and _field(size, "width"):
        return int(_field(size, "height")), int(_field(size, "width"))
    side = _field(size, "shortest_edge") or fallback_size
    if not side:
        raise InputError(
            f"cannot tell the input size from the image processor {type(processor).__name__}; "
            "save one with a size (e.g. size={'height': 384, 'width': 384})"
        )
    divisor = getattr(processor, "size_divisor", None) or 1
    side = max(divisor, int(side) // divisor * divisor)
    return side, side


def _field(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _per_channel(values: Any) -> list[float]:
    values = [values] if isinstance(values, (int, float)) else list(values)
    return values * 3 if len(values) == 1 else values

