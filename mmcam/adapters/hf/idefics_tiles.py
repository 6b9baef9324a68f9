"""Idefics3 / SmolVLM image splitting: the image processor's rules, as differentiable tensor ops.

The processor (``Idefics3ImageProcessor``, ``SmolVLMImageProcessor``) does, per image (H, W):

1. resize so the longest edge is ``size["longest_edge"]`` (the other edge keeps the aspect ratio,
   rounded down, then up to even), capped at the module's ``MAX_IMAGE_SIZE``: (H1, W1);
2. with ``do_image_splitting``: resize each edge up to a multiple of the tile side
   M = ``max_image_size["longest_edge"]`` (the long edge first, the short one from the aspect
   ratio): (H2, W2) = (rows * M, cols * M); when that is larger than one tile it is cut into
   rows x cols tiles of M x M (row by row) and the whole (H2, W2) image, resized to M x M, is
   appended as the global view; a one-tile image is its own single view (rows = cols = 0).
   Without splitting the (H1, W1) image is squashed to M x M (one view);
3. rescale and normalise; every view is a whole tile, so ``pixel_attention_mask`` is all ones.

:meth:`Tiling.preprocess` does steps 1-2's resizes on the uint8 image with the processor's
interpolation (so a tile's pixels equal the processor's), and returns the (C, H2, W2) image;
:meth:`Tiling.views` cuts it into the tiles and the global view inside the forward pass, by
reshapes and one resize, so gradients reach the image. The global view is resized from the
normalised float image, where the processor resizes uint8 values (rounding between its two
separable passes and clamping to [0, 255]): its pixels differ from the processor's by up to
about one uint8 level (measured on the test images: 0.96 of a level).

:class:`TileGrid` stitches a vision or connector layer's per-view tokens of the tiles back onto
one grid over the whole image (rows * g, cols * g), g tokens per tile side; the global view's
tokens are left out of the map (see its docstring). :class:`LanguageTokenGrid` reads a
language-model layer's hidden states at the image-token positions the same way.
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from .preprocess import ImageSettings, _field


@dataclass(frozen=True)
class Tiling:
    """An Idefics3-style image processor's resize and split settings (see the module docstring).

    ``longest_edge``: step 1's target (None: no resize, or ``fixed`` (h, w) when the processor's
    size names a height and width); ``tile``: M; ``splitting``: ``do_image_splitting``;
    ``interpolation``: the torchvision interpolation of the processor's ``resample``;
    ``normalise``: its rescale factor, mean and std; ``max_side``: the processor's cap."""

    longest_edge: int | None
    fixed: tuple[int, int] | None
    tile: int
    splitting: bool
    interpolation: Any
    normalise: ImageSettings
    max_side: int | None = None

    @classmethod
    def from_processor(cls, processor: Any, name: str) -> Tiling:
        """The settings of ``processor`` (an Idefics3 / SmolVLM image processor)."""
        from transformers.image_utils import pil_torch_interpolation_mapping
        from torchvision.transforms.v2 import InterpolationMode

        tile = _field(getattr(processor, "max_image_size", None), "longest_edge")
        if not tile:
            raise InputError(f"{name}'s image processor names no max_image_size['longest_edge'] (the tile side)")
        size = getattr(processor, "size", None)
        longest, fixed = None, None
        if getattr(processor, "do_resize", True):
            longest = _field(size, "longest_edge")
            if not longest and _field(size, "height") and _field(size, "width"):
                fixed = (int(_field(size, "height")), int(_field(size, "width")))
            elif not longest:
                raise InputError(f"{name}'s image processor size {size} names neither longest_edge nor height and width")
        resample = getattr(processor, "resample", None)
        if resample is None:
            interpolation = InterpolationMode.BILINEAR
        elif isinstance(resample, InterpolationMode):
            interpolation = resample
        else:
            interpolation = pil_torch_interpolation_mapping[resample]
        module = sys.modules.get(type(processor).__module__)
        cap = getattr(module, "MAX_IMAGE_SIZE", None)
        return cls(
            None if longest is None else int(longest), fixed, int(tile), bool(getattr(processor, "do_image_splitting", True)),
            interpolation, ImageSettings.from_processor(processor, int(tile)), None if cap is None else int(cap),
        )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(H1, W1): step 1 (``_resize_output_size_rescale_to_max_len`` and the cap)."""
        if self.fixed is not None:
            return self.fixed
        if self.longest_edge is None:
            return height, width
        aspect = width / height
        if width >= height:
            width = self.longest_edge
            height = int(width / aspect)
            height += height % 2
        else:
            height = self.longest_edge
            width = int(height * aspect)
            width += width % 2
        height, width = max(height, 1), max(width, 1)
        if self.max_side is not None and max(height, width) > self.max_side:
            aspect = width / height
            if width >= height:
                width, height = self.max_side, int(self.max_side / aspect)
            else:
                height, width = self.max_side, int(self.max_side * aspect)
        return max(height, 1), max(width, 1)

    def view_size(self, height: int, width: int) -> tuple[int, int]:
        """(H2, W2) of step 2 for an (H1, W1) image: multiples of the tile side (splitting:
        ``resize_for_vision_encoder``), or one tile (no splitting)."""
        tile = self.tile
        if not self.splitting:
            return tile, tile
        aspect = width / height
        if width >= height:
            width = math.ceil(width / tile) * tile
            height = math.ceil(int(width / aspect) / tile) * tile
        else:
            height = math.ceil(height / tile) * tile
            width = math.ceil(int(height * aspect) / tile) * tile
        return height, width

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """RGB uint8 (H, W, 3) -> the normalised (C, H2, W2) image whose tiles the model reads:
        the processor's resizes, on uint8 values as it does them."""
        from torchvision.transforms.v2 import functional as tvF

        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        first = self.resized_size(*image.shape[-2:])
        for size in (first, self.view_size(*first)):
            if tuple(image.shape[-2:]) != size:
                image = tvF.resize(image, list(size), interpolation=self.interpolation, antialias=True)
        settings = self.normalise
        values = image.float() * settings.scale
        if settings.mean is not None and settings.std is not None:
            mean = torch.tensor(settings.mean)[:, None, None]
            std = torch.tensor(settings.std)[:, None, None]
            values = (values - mean) / std
        return values

    def layout(self, images: Tensor) -> tuple[int, int]:
        """(rows, cols) of tiles of preprocessed images (..., H2, W2); (0, 0): one view, no tiles."""
        height, width = (int(side) for side in images.shape[-2:])
        if height % self.tile or width % self.tile:
            raise InputError(
                f"an image of {height}x{width} is no whole number of {self.tile}-pixel tiles; give the adapter's "
                "own preprocess() output"
            )
        if height == width == self.tile:
            return 0, 0
        if not self.splitting:
            raise InputError(f"this image processor squashes every image to {self.tile}x{self.tile}, not {height}x{width}")
        return height // self.tile, width // self.tile

    def views(self, images: Tensor) -> Tensor:
        """Preprocessed images (N, C, H2, W2) -> the model's ``pixel_values`` (N, F, C, M, M):
        the rows x cols tiles row by row, then the global view (the image resized to M x M),
        or the image itself when it is one tile; differentiable."""
        rows, cols = self.layout(images)
        count, channels, tile = images.shape[0], images.shape[1], self.tile
        if rows == cols == 0:
            views = images[:, None]
        else:
            tiles = images.reshape(count, channels, rows, tile, cols, tile).permute(0, 2, 4, 1, 3, 5)
            tiles = tiles.reshape(count, rows * cols, channels, tile, tile)
            views = torch.cat([tiles, self._global_view(images)[:, None]], dim=1)
        empty = (views == 0).flatten(2).all(dim=2)
        if empty.any():
            raise InputError(
                "a tile of the image is all zeros after normalisation; Idefics3 drops such tiles as padding, "
                "so its image tokens would not match"
            )
        return views

    def _global_view(self, images: Tensor) -> Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as tvF

        size = [self.tile, self.tile]
        if self.interpolation == InterpolationMode.LANCZOS and images.device.type != "cpu":
            # torchvision's Lanczos runs on the CPU only (where the processor runs)
            return tvF.resize(images.cpu(), size, interpolation=self.interpolation, antialias=True).to(images.device)
        return tvF.resize(images, size, interpolation=self.interpolation, antialias=True)


class TileGrid:
    """Reads a vision layer's per-view tokens (N * F, g * g, C) as one (N, C, rows * g, cols * g)
    grid over the whole image: tile (i, j)'s g x g tokens fill rows i*g..i*g+g-1 and columns
    j*g..j*g+g-1, so a cell sits at its patch's place in the (H2, W2) image, which is the whole
    original image resized; the core stretches the map back onto the original.

    The global view (the last of the F views of each image) is another look at the whole image at
    a coarser scale; its tokens and their gradients are left out of the map: Grad-CAM weighs
    and sums one layer's cells, and a cell of the global view covers a rows x cols block of tile
    cells, so adding it would mix two grids. The map explains the score's dependence through the
    tiles' tokens (the part the global view carries is not shown); Guided Backprop, taken at the
    input image, follows both paths. A one-view image (no tiles) is its g x g grid.

    ``side`` is g, the hooked layer's tokens per tile side (the vision tower: tile / patch; the
    connector: tile / patch / scale_factor after its pixel shuffle, whose tokens run row by row
    over the coarser grid). The tile layout is the last forward pass's in the calling thread
    (:meth:`record`), since it depends on the images' size.
    """

    def __init__(self, side: int) -> None:
        self.side = side
        self._last = threading.local()

    def record(self, count: int, rows: int, cols: int) -> None:
        """The layout of the forward pass about to run: ``count`` images of rows x cols tiles."""
        self._last.layout = (count, rows, cols)

    def _layout_of_images(self) -> tuple[int, int, int]:
        """(images, rows, cols) of the last forward pass in this thread."""
        layout = getattr(self._last, "layout", None)
        if layout is None:
            raise RuntimeError("no Idefics3 forward pass has run in this thread: the tile layout is unknown")
        return layout

    def _layout(self, views: int) -> tuple[int, int, int]:
        count, rows, cols = layout = self._layout_of_images()
        per_image = rows * cols + 1 if rows else 1
        if views != count * per_image:
            raise ValueError(
                f"the hooked layer gives {views} views, not the {count} x {per_image} of the last forward pass's "
                f"{rows}x{cols} tiles; hook a layer of the vision tower or the connector"
            )
        return layout

    def __call__(self, activations: Tensor) -> Tensor:
        """(N * F, g * g, C) -> (N, C, rows * g, cols * g)."""
        return self.gradients(activations[None])[:, 0]

    def gradients(self, gradients: Tensor) -> Tensor:
        """Per-target gradients (T, N * F, g * g, C) -> (N, T, C, rows * g, cols * g)."""
        if gradients.dim() != 4:
            raise ValueError(f"expected per-view tokens (N * F, g * g, C), got shape {tuple(gradients.shape[1:])}")
        targets, views, tokens, channels = gradients.shape
        count, rows, cols = self._layout(views)
        side = self.side
        if side * side != tokens:
            raise ValueError(
                f"the hooked layer gives {tokens} tokens per view, not the {side}x{side} expected of it; hook a layer of "
                "the vision tower, the connector or the language model"
            )
        per_image = views // count
        grid = gradients.reshape(targets, count, per_image, tokens, channels)
        rows, cols = max(rows, 1), max(cols, 1)
        grid = grid[:, :, : rows * cols].reshape(targets, count, rows, cols, side, side, channels)
        grid = grid.permute(1, 0, 6, 2, 4, 3, 5)  # (N, T, C, rows, g, cols, g)
        return grid.reshape(count, targets, channels, rows * side, cols * side)

    def describe(self) -> str:
        """``"tiles 2x3 of 4x4 tokens stitched to 8x12, global view left out"``."""
        layout, side = getattr(self._last, "layout", None), self.side
        if layout is None:
            return f"Idefics3 tiles of {side}x{side} tokens"
        _, rows, cols = layout
        if not rows:
            return f"one view of {side}x{side} tokens (no tiles)"
        return f"tiles {rows}x{cols} of {side}x{side} tokens stitched to {rows * side}x{cols * side}, global view left out"


class LanguageTokenGrid:
    """Reads a language-model layer's hidden states (R, L, D) at the image-token positions as the
    connector's tiles, stitched by :class:`TileGrid` (global view left out).

    The R rows are token sequences, each owned by one image (a caption per image; a VQA prompt
    plus one candidate answer per row, several rows per image). An image's rows share its
    prompt, and the image tokens lie inside it, so a causal model gives them the same hidden
    states there: the activations are the first row's, and a target's gradient, which reaches
    only its own row, is summed over the image's rows (the gradient with respect to the shared
    value). Positions and owners are the last forward pass's in the calling thread
    (:meth:`record`).
    """

    def __init__(self, tiles: TileGrid) -> None:
        self.tiles = tiles
        self._last = threading.local()

    def record(self, positions: list[list[int]], owners: list[int]) -> None:
        """Row r holds its image's tokens at ``positions[r]`` and belongs to image ``owners[r]``."""
        self._last.rows = (positions, owners)

    def __call__(self, activations: Tensor) -> Tensor:
        """(R, L, D) -> (N, D, rows * g, cols * g), g the connector's tokens per tile side."""
        positions, owners = self._rows(activations.shape[0])
        first = [owners.index(n) for n in range(max(owners) + 1)]
        tokens = torch.stack([activations[r, positions[r]] for r in first])
        return self.tiles(self._per_view(tokens))

    def gradients(self, gradients: Tensor) -> Tensor:
        """(T, R, L, D) -> (N, T, D, rows * g, cols * g), each image's rows summed."""
        positions, owners = self._rows(gradients.shape[1])
        rows = torch.stack([gradients[:, r, positions[r]] for r in range(len(owners))], dim=1)  # (T, R, K, D)
        index = torch.tensor(owners, device=rows.device)
        summed = rows.new_zeros(rows.shape[0], max(owners) + 1, *rows.shape[2:]).index_add_(1, index, rows)
        merged = self._per_view(summed.flatten(0, 1))
        return self.tiles.gradients(merged.reshape(rows.shape[0], -1, *merged.shape[1:]))

    def describe(self) -> str:
        return f"language-model tokens at the image positions: {self.tiles.describe()}"

    def _rows(self, count: int) -> tuple[list[list[int]], list[int]]:
        rows = getattr(self._last, "rows", None)
        if rows is None or len(rows[1]) != count:
            raise ValueError(f"the hooked layer gives {count} rows, not the last forward pass's token sequences")
        return rows

    def _per_view(self, tokens: Tensor) -> Tensor:
        """(N', K, D) image tokens, K = F views x tokens per view -> (N' * F, K / F, D)."""
        _, rows, cols = self.tiles._layout_of_images()
        views = rows * cols + 1 if rows else 1
        return tokens.reshape(tokens.shape[0] * views, tokens.shape[1] // views, tokens.shape[2])
