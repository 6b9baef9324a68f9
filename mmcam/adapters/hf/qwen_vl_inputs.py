"""Qwen-VL pixel inputs: the image processor's own resize, then its flattened patches built
inside the forward pass with differentiable torch ops.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL share one image processor (``Qwen2VLImageProcessor``): it
resizes each image to a multiple of ``patch_size * merge_size`` on both sides, within its
``min_pixels`` / ``max_pixels`` budget and close to the image's aspect ratio (its
``smart_resize``), normalises it, repeats the frame ``temporal_patch_size`` times and flattens
the result into patches in merge-window order: for each ``merge_size`` x ``merge_size`` window,
row by row, its patches row by row. ``image_grid_thw`` gives (1, h, w) patches per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ...errors import InputError


@dataclass(frozen=True)
class QwenImages:
    """An image processor's patch geometry and the transforms between its flattened patches
    (P, C * T * p * p) and an image tensor (C, H', W') of its resized, normalised image."""

    processor: Any
    patch_size: int
    temporal_patch_size: int
    merge_size: int

    @classmethod
    def of(cls, image_processor: Any, vision_config: Any, name: str) -> QwenImages:
        """The geometry of ``image_processor``, which must agree with the vision tower's."""
        settings = {key: getattr(image_processor, key, None) for key in ("patch_size", "temporal_patch_size", "merge_size")}
        tower = {
            "patch_size": vision_config.patch_size,
            "temporal_patch_size": vision_config.temporal_patch_size,
            "merge_size": vision_config.spatial_merge_size,
        }
        if settings != tower:
            raise InputError(f"{name}'s image processor has {settings}, its vision tower {tower}; save a matching processor")
        return cls(image_processor, **{key: int(value) for key, value in settings.items()})

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """RGB uint8 (H, W, 3) -> (C, H', W'): the processor's resized, normalised image (its
        own resize rules and settings), read back from its flattened patches."""
        encoded = self.processor(images=Image.fromarray(pixels), return_tensors="pt")
        grid = encoded["image_grid_thw"][0].tolist()
        return self.unpatchify(encoded["pixel_values"], grid)

    def unpatchify(self, patches: Tensor, grid: list[int]) -> Tensor:
        """One image's patches (h * w, C * T * p * p) with grid (1, h, w) -> (C, h * p, w * p),
        from its first temporal frame (an image's frames are copies)."""
        frames, height, width = grid
        if frames != 1:
            raise InputError(f"an image of {frames} temporal patches; mmcam explains single images")
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        blocks = patches.reshape(height // m, width // m, m, m, -1, t, p, p)[:, :, :, :, :, 0]
        # (h/m, w/m, m, m, C, p, p) -> (C, h/m, m, p, w/m, m, p)
        image = blocks.permute(4, 0, 2, 5, 1, 3, 6)
        return image.reshape(image.shape[0], height * p, width * p)

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) patches of a resized image of ``size`` (H', W')."""
        height, width = size
        factor = self.patch_size * self.merge_size
        if height % factor or width % factor:
            raise InputError(f"an input of {height}x{width} is no whole number of {factor}-pixel merge windows")
        return height // self.patch_size, width // self.patch_size

    def patches(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images (N, C, H', W') -> the model's ``pixel_values`` (N * h * w, C * T * p * p) and
        ``image_grid_thw`` (N, 3), as the processor builds them (differentiable)."""
        count, channels = images.shape[:2]
        height, width = self.grid((int(images.shape[-2]), int(images.shape[-1])))
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        windows = images.reshape(count, channels, height // m, m, p, width // m, m, p)
        # (N, h/m, w/m, m, m, C, p, p), then the frame repeated T times after C
        ordered = windows.permute(0, 2, 5, 3, 6, 1, 4, 7).unsqueeze(6)
        flat = ordered.expand(*ordered.shape[:6], t, p, p).reshape(count * height * width, channels * t * p * p)
        grid = torch.tensor([[1, height, width]] * count, dtype=torch.long, device=images.device)
        return flat, grid

    def tokens(self, size: tuple[int, int]) -> int:
        """Image tokens the language model reads for a resized image of ``size``: h * w / m^2."""
        height, width = self.grid(size)
        return height * width // self.merge_size**2
