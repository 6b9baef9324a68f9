"""LLaVA-NeXT / OneVision "anyres" views of an image, built inside the forward pass, and the
layout that stitches the vision tokens of the tiles back into one grid over the image.

The processor picks, per image of (H, W), the best of its ``image_grid_pinpoints``
(``select_best_resolution``), resizes the image into it keeping the aspect ratio, pads it
(centred) to the pinpoint, cuts it into square tiles of the vision tower's input size and puts a
base view (the whole image resized to one tile) first. :class:`AnyresViews` does the same with
differentiable torch ops from the normalised original image (3, H, W), so Guided Backprop reaches
the image and the image's own size is the ``image_sizes`` the model needs. The resizes are done
in floating point (the processor resizes uint8 pixels and rounds): the model's pixel values
match the processor's to 1e-5 where no resize happens and within about one uint8 level where
one does.

:class:`TileLayout` reads a vision-tower layer's tokens (all views of all images in one batch,
(V, extra + p*p, C)) as the model's ``pack_image_features`` does: it drops each image's base
view, lays the tiles' p x p patch grids side by side into the pinpoint's grid and unpads it with
the model's own ``unpad_image``, giving one (C, h, w) grid over the unpadded image, which is the
original image: the map is stretched onto it (the unpadding rounds to whole patch cells, so a
cell's edge may be off by up to half a cell). The base view's tokens and their gradients are
discarded: the map shows where, in the high-resolution tiles, the score depends on the layer;
what the score draws from the low-resolution base view is not in the map.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import InputError
from .preprocess import ImageSettings

# the processor's resample (a PIL code) -> torch's interpolation mode and whether it antialiases,
# as torchvision's resize of tensors does it
_RESAMPLE = {0: ("nearest-exact", False), 2: ("bilinear", True), 3: ("bicubic", True)}


@dataclass(frozen=True)
class Tiling:
    """How one image of ``size`` (H, W) is tiled: the chosen pinpoint ``best`` (H_b, W_b), the
    image resized into it keeping its aspect ratio (``content`` (h, w)), the padding around it
    (left, right, top, bottom) and the tile grid (rows, columns)."""

    size: tuple[int, int]
    best: tuple[int, int]
    content: tuple[int, int]
    padding: tuple[int, int, int, int]
    grid: tuple[int, int]

    @property
    def views(self) -> int:
        """Base view plus tiles."""
        return 1 + self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class AnyresViews:
    """The processor's anyres preprocessing as torch ops (see the module docstring)."""

    pinpoints: tuple[tuple[int, int], ...]
    tile: int
    base: tuple[int, int]
    settings: ImageSettings
    mode: str
    antialias: bool

    @classmethod
    def from_processor(cls, image_processor: Any, config: Any, name: str) -> AnyresViews:
        """The views of ``image_processor``'s settings; InputError where they disagree with the
        model's ``config`` (pinpoints, tile size) or name a resample torch cannot do."""
        pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
        if not pinpoints:
            raise InputError(f"{name}'s image processor has no image_grid_pinpoints; save it with the model's pinpoints")
        pinpoints = tuple((int(h), int(w)) for h, w in pinpoints)
        model_pinpoints = tuple((int(h), int(w)) for h, w in config.image_grid_pinpoints)
        if pinpoints != model_pinpoints:
            raise InputError(
                f"{name}: the image processor's image_grid_pinpoints {pinpoints} differ from the model's {model_pinpoints}"
            )
        size, crop = image_processor.size, getattr(image_processor, "crop_size", None)
        if _side(size, "height"):
            base = (_side(size, "height"), _side(size, "width"))
        else:
            base = (_side(size, "shortest_edge"),) * 2
        tile = _side(crop, "height") or base[0]
        side = int(config.vision_config.image_size)
        cropped = (side, side)
        if getattr(image_processor, "do_center_crop", False):
            cropped = (_side(crop, "height"), _side(crop, "width"))
        if base != (side, side) or tile != side or cropped != (side, side):
            raise InputError(
                f"{name}: the image processor's size {size} and crop_size {crop} are not the vision tower's "
                f"{side}x{side} input; save the processor with that size"
            )
        if any(height % side or width % side for height, width in pinpoints):
            raise InputError(f"{name}: image_grid_pinpoints {pinpoints} are not whole numbers of {side}-pixel tiles")
        resample = int(getattr(image_processor, "resample", 3))
        if resample not in _RESAMPLE:
            raise InputError(
                f"{name}: the image processor's resample {resample} is not one of nearest (0), bilinear (2), bicubic (3)"
            )
        mode, antialias = _RESAMPLE[resample]
        settings = ImageSettings.from_processor(image_processor, side)
        return cls(pinpoints, side, base, settings, mode, antialias)

    def tensor(self, pixels: np.ndarray) -> Tensor:
        """RGB uint8 (H, W, 3) -> the normalised image at its own size (3, H, W)."""
        return dataclasses.replace(self.settings, size=tuple(pixels.shape[:2])).tensor(pixels)

    def tiling(self, size: tuple[int, int]) -> Tiling:
        """The processor's tiling of an image of ``size`` (H, W)."""
        from transformers.image_processing_utils import get_patch_output_size, select_best_resolution

        height, width = size
        best = tuple(int(side) for side in select_best_resolution((height, width), [list(p) for p in self.pinpoints]))
        shape_only = torch.empty(1, 1, 1).expand(3, height, width)
        content = tuple(int(side) for side in get_patch_output_size(shape_only, best, "channels_first"))
        left, extra_x = divmod(best[1] - content[1], 2)
        top, extra_y = divmod(best[0] - content[0], 2)
        padding = (left, left + extra_x, top, top + extra_y)
        return Tiling(size, best, content, padding, (best[0] // self.tile, best[1] // self.tile))

    def inputs(self, images: Tensor) -> tuple[dict[str, Tensor], Tiling]:
        """The model's ``pixel_values`` (N, views, 3, s, s) (base view first, then the tiles row
        by row) and ``image_sizes`` (N, 2) of normalised images (N, 3, H, W), and their tiling."""
        count, _, height, width = images.shape
        tiling = self.tiling((height, width))
        content = self._resized(images, tiling.content)
        fill = self._black(images)
        padded = nn.functional.pad(content - fill, tiling.padding) + fill
        rows, columns = tiling.grid
        side = self.tile
        tiles = padded.reshape(count, 3, rows, side, columns, side).permute(0, 2, 4, 1, 3, 5)
        tiles = tiles.reshape(count, rows * columns, 3, side, side)
        base = self._resized(images, self.base)[:, None]
        sizes = torch.tensor([[height, width]] * count, device=images.device)
        return {"pixel_values": torch.cat([base, tiles], dim=1), "image_sizes": sizes}, tiling

    def _resized(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """Images resized to ``size`` as torchvision resizes them, then clamped to the range of
        pixel values (the processor's uint8 resize clips the overshoot of bicubic weights)."""
        if tuple(images.shape[-2:]) == tuple(size):
            return images
        options = {"antialias": self.antialias} if self.antialias else {}
        if self.mode != "nearest-exact":
            options["align_corners"] = False
        resized = nn.functional.interpolate(images, size=size, mode=self.mode, **options)
        low, high = self._black(images), self._white(images)
        return torch.maximum(torch.minimum(resized, high), low)

    def _black(self, images: Tensor) -> Tensor:
        return self._normalised(images, 0.0)

    def _white(self, images: Tensor) -> Tensor:
        return self._normalised(images, 255.0)

    def _normalised(self, images: Tensor, value: float) -> Tensor:
        """Pixel ``value`` (0..255) as the normalised (1, 3, 1, 1) value of each channel."""
        level = torch.full((3,), value * self.settings.scale, dtype=images.dtype, device=images.device)
        if self.settings.mean is not None and self.settings.std is not None:
            mean = torch.tensor(self.settings.mean, dtype=images.dtype, device=images.device)
            std = torch.tensor(self.settings.std, dtype=images.dtype, device=images.device)
            level = (level - mean) / std
        return level[None, :, None, None]


class TileLayout:
    """Reshape for a vision-tower layer (or the projector) of LLaVA-NeXT / OneVision: tokens
    (V, extra + p*p, C) of all views of a batch -> (N, C, h, w), each image's tiles stitched and
    unpadded as the model's ``pack_image_features`` does (see the module docstring); ``extra``
    leading tokens (CLIP's CLS) are dropped. The tiling is the last forward pass's on this
    thread, set by the scorer with :meth:`use`."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        vision = model.config.vision_config
        self.patches = int(vision.image_size) // int(vision.patch_size)
        self.layer = layer
        self._unpad = next(  # the model's own unpadding (a subclass's module may not define it)
            vars(sys.modules[kind.__module__])["unpad_image"]
            for kind in type(model).__mro__
            if "unpad_image" in vars(sys.modules.get(kind.__module__, sys))
        )
        self._local = threading.local()

    def use(self, tiling: Tiling, count: int) -> None:
        """Lay out the next tokens as ``count`` images tiled by ``tiling``."""
        self._local.last = (tiling, count)

    def record(self, ids: Tensor, owners: Sequence[int]) -> None:
        """Nothing to record: the vision tokens' layout depends on the tiling only."""

    def _last(self) -> tuple[Tiling, int]:
        last = getattr(self._local, "last", None)
        if last is None:
            raise RuntimeError("TileLayout read tokens before any forward pass on this thread")
        return last

    def __call__(self, activations: Tensor) -> Tensor:
        """(V, extra + p*p, C) -> (N, C, h, w)."""
        return self._stitch(activations[None])[:, 0]

    def gradients(self, gradients: Tensor) -> Tensor:
        """(T, V, extra + p*p, C) -> (N, T, C, h, w)."""
        return self._stitch(gradients)

    def describe(self) -> str:
        tiling, _ = self._last()
        rows, columns = tiling.grid
        p = self.patches
        return (
            f"anyres tiles {rows}x{columns} of {p}x{p} patches stitched and unpadded to "
            f"{'x'.join(map(str, self.grid(tiling)))} (base view dropped)"
        )

    def grid(self, tiling: Tiling) -> tuple[int, int]:
        """(h, w) of the stitched, unpadded patch grid of an image tiled by ``tiling``."""
        rows, columns = tiling.grid
        canvas = torch.empty(1, rows * self.patches, columns * self.patches)
        return tuple(self._unpad(canvas, list(tiling.size)).shape[1:])

    def _stitch(self, tokens: Tensor) -> Tensor:
        """(T, V, L, C) -> (N, T, C, h, w)."""
        tiling, count = self._last()
        targets, views, length, channels = tokens.shape
        p = self.patches
        if views != count * tiling.views or length < p * p:
            raise InputError(
                f"layer {self.layer!r} gives {tuple(tokens.shape[1:])}, not the {count} x {tiling.views} views of "
                f"{p}x{p} patch tokens of the vision tower; hook a vision tower block or the projector"
            )
        rows, columns = tiling.grid
        tiles = tokens.reshape(targets, count, tiling.views, length, channels)[:, :, 1:, length - p * p :]
        grid = tiles.reshape(targets, count, rows, columns, p, p, channels).permute(1, 0, 6, 2, 4, 3, 5)
        grid = grid.reshape(count * targets * channels, rows * p, columns * p)
        unpadded = self._unpad(grid, list(tiling.size))
        return unpadded.reshape(count, targets, channels, *unpadded.shape[1:])


class LanguageTokens:
    """Reshape for a language-model layer's hidden states (R, L, C) of LLaVA-NeXT / OneVision:
    each row's image placeholders hold the base view's tokens, then the rows of the grid the
    language model reads, each closed by a newline token; the grid's cells are laid out on (h, w)
    (the base view's tokens and the newlines are dropped, with their gradients). That grid is the
    stitched, unpadded tile grid of :class:`TileLayout`, or, where OneVision's ``anyres_max_K``
    shrinks it for the language model, the shrunk grid the model reads. Rows per image, the
    first row's activations and the sum of the rows' gradients: see
    :class:`~mmcam.adapters.hf.llava.ImageTokenRows`, made per image size."""

    def __init__(self, tiles: TileLayout, config: Any, image_token_id: int, count: Callable[[tuple[int, int]], int]) -> None:
        self._tiles = tiles
        aspect = getattr(config, "vision_aspect_ratio", None)
        self._max_patches = int(aspect.removeprefix("anyres_max_")) if aspect else None
        self._image_token_id = image_token_id
        self._count = count
        self._local = threading.local()

    def use(self, tiling: Tiling, count: int) -> None:
        """Lay out the next forward's placeholders for images tiled by ``tiling``."""
        from .llava import ImageTokenRows

        height, width = self.grid(tiling)
        base = self._count(tiling.size) - height * (width + 1)
        self._local.rows = ImageTokenRows(self._image_token_id, (height, width + 1), drop=base), width

    def grid(self, tiling: Tiling) -> tuple[int, int]:
        """(h, w) of the grid the language model reads for an image tiled by ``tiling``."""
        height, width = self._tiles.grid(tiling)
        if self._max_patches is not None:  # OneVision's pack_image_features: shrink past ~K tiles
            ratio = math.sqrt(height * width / (self._max_patches * self._tiles.patches**2))
            if ratio > 1.1:
                height, width = int(height // ratio), int(width // ratio)
        return height, width

    def record(self, ids: Tensor, owners: Sequence[int]) -> None:
        """The rows ``ids`` (R, L') the language model reads next, ``owners[r]`` row r's image."""
        self._rows()[0].record(ids, owners)

    def _rows(self) -> tuple[Any, int]:
        rows = getattr(self._local, "rows", None)
        if rows is None:
            raise RuntimeError("LanguageTokens read tokens before any forward pass on this thread")
        return rows

    def __call__(self, activations: Tensor) -> Tensor:
        """(R, L, C) -> (N, C, h, w)."""
        rows, width = self._rows()
        return rows(activations)[..., :width]

    def gradients(self, gradients: Tensor) -> Tensor:
        """(T, R, L, C) -> (N, T, C, h, w)."""
        rows, width = self._rows()
        return rows.gradients(gradients)[..., :width]

    def describe(self) -> str:
        rows, width = self._rows()
        return f"language-model tokens {rows.grid[0]}x{width} at the image placeholders (base view and newlines dropped)"


def _side(size: Any, key: str) -> int | None:
    """``size[key]`` of a processor's size (a dict or a SizeDict), None when unset."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None
