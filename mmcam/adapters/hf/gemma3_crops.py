"""Gemma 3's pan-and-scan crops (``do_pan_and_scan`` in its image processor), as tensor ops.

mmcam makes crops when the saved image processor sets ``do_pan_and_scan`` (as
``Gemma3ImageProcessor`` alone does); transformers' ``Gemma3Processor`` call makes them only
when asked at call time, its own defaults overriding the saved settings.

The processor, per image (H, W): when the long side is at least ``pan_and_scan_min_ratio_to_activate``
times the short one, it cuts the image along its long side into ``cols`` (or ``rows``) crops of
ceil(W / cols) pixels (the last one narrower when W does not divide), as many as the aspect
ratio rounds to, at least 2, at most ``pan_and_scan_max_num_crops`` and no narrower than
``pan_and_scan_min_crop_size``; it resizes the whole image (the thumbnail) and each crop to the
fixed s x s input; the model reads the thumbnail's image tokens, then each crop's.

:meth:`PanAndScan.preprocess` resizes each crop of the processor to s x s and lays them side by
side: a (C, rows * s, cols * s) image laid like the original (a crop's block at its place), so
maps and Guided Backprop land on the original image. :meth:`PanAndScan.views` cuts it into the
crops inside the forward pass and resizes it whole to s x s for the thumbnail (differentiable);
that thumbnail is the processor's up to resampling (the processor resizes the original once).

:class:`CropGrid` stitches a layer's per-view tokens of the crops into one grid over the image;
the thumbnail's tokens are left out of the map, as Idefics3's global view is
(:class:`~mmcam.adapters.hf.idefics_tiles.TileGrid`, whose stitching it reuses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from .idefics_tiles import LanguageTokenGrid, TileGrid
from .preprocess import ImageSettings


@dataclass(frozen=True)
class PanAndScan:
    """The processor's pan-and-scan settings and its fixed input ``image`` (s x s, normalisation)."""

    image: ImageSettings
    min_crop: int
    max_crops: int
    min_ratio: float

    @classmethod
    def from_processor(cls, processor: Any, image: ImageSettings) -> PanAndScan | None:
        """The settings of a Gemma 3 processor whose image processor makes crops; None when it
        makes none. Unset values are the processor's own defaults (its ``images_kwargs``)."""
        images = processor.image_processor
        if not getattr(images, "do_pan_and_scan", False):
            return None
        defaults = getattr(type(processor), "images_kwargs", {}) or {}

        def setting(name: str) -> Any:
            value = getattr(images, name, None)
            return defaults.get(name) if value is None else value

        return cls(
            image, int(setting("pan_and_scan_min_crop_size")), int(setting("pan_and_scan_max_num_crops")),
            float(setting("pan_and_scan_min_ratio_to_activate")),
        )

    @property
    def side(self) -> int:
        return self.image.size[0]

    def crops(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the crops of an (H, W) image, by the processor's rule; (0, 0): none."""
        wide = width >= height
        long, short = (width, height) if wide else (height, width)
        if long / short < self.min_ratio:
            return 0, 0
        count = min(int(math.floor(long / self.min_crop)), int(math.floor(long / short + 0.5)))
        count = min(self.max_crops, max(2, count))
        if min(math.ceil(long / count), short) < self.min_crop:
            return 0, 0
        return (1, count) if wide else (count, 1)

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """RGB uint8 (H, W, 3) -> (C, s, s) without crops, else (C, rows * s, cols * s): crop
        (i, j), the processor's box of the original, resized to s x s at block (i, j)."""
        height, width = pixels.shape[:2]
        rows, cols = self.crops(height, width)
        if not rows:
            return self.image.tensor(pixels)
        tall, wide = math.ceil(height / rows), math.ceil(width / cols)
        blocks = [
            torch.cat([self.image.tensor(pixels[i * tall : (i + 1) * tall, j * wide : (j + 1) * wide]) for j in range(cols)], dim=2)
            for i in range(rows)
        ]
        return torch.cat(blocks, dim=1)

    def layout(self, images: Tensor) -> tuple[int, int]:
        """(rows, cols) of crops of preprocessed images (..., rows * s, cols * s); (0, 0): none."""
        height, width = (int(side) for side in images.shape[-2:])
        side = self.side
        if height % side or width % side or min(height, width) != side:
            raise InputError(f"an image of {height}x{width} is no row or column of {side}-pixel crops; give the adapter's own preprocess() output")
        return (0, 0) if height == width else (height // side, width // side)

    def views(self, images: Tensor) -> Tensor:
        """Preprocessed images (N, C, rows * s, cols * s) -> the model's ``pixel_values``
        (N * (1 + rows * cols), C, s, s): per image the thumbnail, then the crops row by row
        (the images themselves without crops); differentiable."""
        rows, cols = self.layout(images)
        if not rows:
            return images
        count, channels, side = images.shape[0], images.shape[1], self.side
        thumbnail = torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        crops = images.reshape(count, channels, rows, side, cols, side).permute(0, 2, 4, 1, 3, 5)
        crops = crops.reshape(count, rows * cols, channels, side, side)
        return torch.cat([thumbnail[:, None], crops], dim=1).reshape(-1, channels, side, side)


class CropGrid(TileGrid):
    """:class:`TileGrid` for Gemma 3's views, ordered thumbnail first then the crops: the crops'
    g x g tokens stitched at their places into (rows * g, cols * g), the thumbnail's left out; an
    image without crops is its thumbnail's g x g grid."""

    def gradients(self, gradients: Tensor) -> Tensor:
        """Per-target gradients (T, N * F, g * g, C) -> (N, T, C, rows * g, cols * g)."""
        _, rows, cols = self._layout(gradients.shape[1])
        if rows:
            views = gradients.reshape(gradients.shape[0], -1, rows * cols + 1, *gradients.shape[2:])
            gradients = torch.cat([views[:, :, 1:], views[:, :, :1]], dim=2).reshape(gradients.shape)
        return super().gradients(gradients)


@dataclass
class CropViews:
    """The model's image inputs from preprocessed images (:class:`PanAndScan`), recording each
    pass's crop layout in the map's :class:`CropGrid` and, for a language-model layer, its rows'
    image-token positions in ``language``."""

    crops: PanAndScan
    grid: CropGrid
    language: LanguageTokenGrid | None = None

    @property
    def reshape(self) -> CropGrid | LanguageTokenGrid:
        """How the hooked layer's output becomes the map's grid."""
        return self.grid if self.language is None else self.language

    def count(self, images: Tensor) -> int:
        """Crops per image of preprocessed images (N, C, rows * s, cols * s)."""
        rows, cols = self.crops.layout(images)
        return rows * cols

    def inputs(self, images: Tensor) -> Tensor:
        """``pixel_values`` (N * F, C, s, s) of images (N, C, rows * s, cols * s)."""
        self.grid.record(images.shape[0], *self.crops.layout(images))
        return self.crops.views(images)

    def rows(self, prompts: list[list[int]] | list[tuple[int, ...]], owners: Any, image_id: int) -> None:
        """The language model's rows of the coming pass: row r begins with ``prompts[owners[r]]``."""
        if self.language is not None:
            positions = [[p for p, token in enumerate(prompt) if token == image_id] for prompt in prompts]
            self.language.record([positions[n] for n in owners], list(owners))
