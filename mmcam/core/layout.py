"""Reading a layer's output as a spatial grid: channels-first, channels-last or tokens.

Grad-CAM needs activations (N, C, h, w). Layers give other shapes: a ConvNeXt or Swin stage in
timm gives (N, h, w, C), a ViT block gives tokens (N, L, C) whose first tokens (class, distillation,
register tokens) have no place in the image, and some encoders run sequence-first (L, N, C).
:func:`infer_layout` decides from the shape, the batch size and the image tensor's size: the grid
must have the image's proportions (equal strides along both axes). When the shape fits no layout
it refuses rather than guessing; pass ``reshape=`` (e.g. :class:`~mmcam.TokenGrid`) to say it
explicitly. A 4-D shape that reads as a grid both ways is taken as channels-first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..errors import InputError

MAX_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class Layout:
    """How to turn a layer's output into (N, C, h, w): ``kind`` is ``"NCHW"``, ``"NHWC"`` or
    ``"tokens"``; tokens drop ``prefix`` leading tokens and fill ``grid`` row by row;
    ``sequence_first`` tokens come as (L, N, C)."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0
    sequence_first: bool = False

    def __call__(self, activations: Tensor) -> Tensor:
        """(N, ...) in this layout -> (N, C, h, w); gradients (N*T, ...) go through it too."""
        if self.kind == "NCHW":
            return activations
        if self.kind == "NHWC":
            return activations.permute(0, 3, 1, 2)
        tokens = activations.transpose(0, 1) if self.sequence_first else activations
        height, width = self.grid
        patches = tokens[:, self.prefix :, :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)

    def gradients(self, gradients: Tensor) -> Tensor:
        """Per-target gradients (T, *activation shape) -> (N, T, C, h, w)."""
        count = gradients.shape[0]
        if self.kind == "tokens" and self.sequence_first:
            # (T, L, N, C): put each target's batch first, then read as batch-first tokens
            merged = gradients.transpose(1, 2).reshape(-1, gradients.shape[1], gradients.shape[3])
            grid = Layout("tokens", self.grid, self.prefix)(merged)
        else:
            grid = self(gradients.reshape(count * gradients.shape[1], *gradients.shape[2:]))
        return grid.reshape(count, -1, *grid.shape[1:]).transpose(0, 1)

    def describe(self) -> str:
        """``"NHWC 7x7"``, ``"tokens 14x14 after 1 prefix token"``."""
        grid = f"{self.grid[0]}x{self.grid[1]}"
        if self.kind != "tokens":
            return f"{self.kind} {grid}"
        order = ", sequence-first" if self.sequence_first else ""
        return f"tokens {grid} after {self.prefix} prefix token{'s' if self.prefix != 1 else ''}{order}"


def infer_layout(
    shape: tuple[int, ...],
    batch: int,
    image_size: tuple[int, int],
    *,
    layer_name: str = "the layer",
    prefix_tokens: int | None = None,
) -> Layout:
    """The layout of activations of ``shape`` for a batch of ``batch`` images of ``image_size``
    (H, W). ``prefix_tokens`` fixes the number of leading non-patch tokens when the model says
    it (timm's ``num_prefix_tokens``); otherwise the fewest that leave a grid of the image's
    proportions are dropped."""
    shape = tuple(int(size) for size in shape)
    if len(shape) == 4:
        return _grid_layout(shape, image_size, layer_name)
    if len(shape) == 3:
        return _token_layout(shape, batch, image_size, layer_name, prefix_tokens)
    raise InputError(
        f"layer {layer_name!r} gives activations of shape {shape}; a spatial layer is needed: "
        "(N, C, h, w), (N, h, w, C) or tokens (N, L, C)"
    )


def _fits(grid: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """A grid of (h, w) cells covers an (H, W) image with (nearly) equal strides."""
    (height, width), (image_height, image_width) = grid, image_size
    if height < 1 or width < 1 or height > image_height or width > image_width:
        return False
    stride_y, stride_x = image_height / height, image_width / width
    # strides of padded, rounded-up grids differ by up to one cell in h (or w) cells
    tolerance = max(0.1, 1.0 / min(height, width))
    return abs(stride_y - stride_x) <= tolerance * max(stride_y, stride_x) + 1e-9


def _grid_layout(shape: tuple[int, ...], image_size: tuple[int, int], layer_name: str) -> Layout:
    first, last = (shape[2], shape[3]), (shape[1], shape[2])
    if _fits(first, image_size):
        # when both readings fit (channels as few as cells, tiny models), PyTorch's own
        # convention wins: channels-last layers have many more channels than cells per side
        return Layout("NCHW", first)
    if _fits(last, image_size):
        return Layout("NHWC", last)
    raise InputError(
        f"layer {layer_name!r} gives {shape}, which has the proportions of the "
        f"{image_size[0]}x{image_size[1]} image neither as (N, C, h, w) nor as (N, h, w, C); "
        "hook a spatial layer or pass reshape="
    )


def _token_layout(
    shape: tuple[int, ...], batch: int, image_size: tuple[int, int], layer_name: str, prefix_tokens: int | None
) -> Layout:
    sequence_first = shape[0] != batch and shape[1] == batch
    length = shape[0] if sequence_first else shape[1]
    if not sequence_first and shape[0] != batch:
        raise InputError(f"layer {layer_name!r} gives {shape}, whose batch size is not the {batch} images given")
    prefixes = [prefix_tokens] if prefix_tokens is not None else range(0, min(MAX_PREFIX_TOKENS, length - 1) + 1)
    for prefix in prefixes:
        grid = _grid_of(length - prefix, image_size)
        if grid is not None:
            return Layout("tokens", grid, prefix, sequence_first)
    raise InputError(
        f"layer {layer_name!r} gives {length} tokens, which form no grid of the "
        f"{image_size[0]}x{image_size[1]} image's proportions after dropping "
        f"{prefix_tokens if prefix_tokens is not None else f'0-{MAX_PREFIX_TOKENS}'} leading tokens; "
        "pass reshape=TokenGrid(drop=..., grid=(h, w))"
    )


def _grid_of(count: int, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) with h * w = ``count`` closest to the image's proportions, if it fits."""
    if count < 1:
        return None
    image_height, image_width = image_size
    best = None
    for height in range(1, math.isqrt(count) + 1):
        if count % height:
            continue
        for grid in ((height, count // height), (count // height, height)):
            error = abs(math.log((grid[0] / grid[1]) / (image_height / image_width)))
            if _fits(grid, image_size) and (best is None or error < best[0]):
                best = (error, grid)
    return None if best is None else best[1]
