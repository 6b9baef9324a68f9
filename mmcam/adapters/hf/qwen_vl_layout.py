"""Qwen-VL token layouts: hooked activations back onto each image's (h, w) grid.

The vision tower runs all images of a pass as ONE sequence (S, C), without a batch dimension:
image after image, each image's patches in the processor's merge-window order (for every
m x m window, row by row, its m * m patches row by row). Qwen2.5-VL's tower reorders that
sequence for its window attention (whole m * m units, by ``window_index``) before its first
block and restores the order only after its merger, so its blocks' and merger's outputs are in
window order. The merger's output (S / m^2, C') has one token per window: the image tokens the
language model reads, row by row on the merged grid (h / m, w / m). A language-model layer's
hidden states (B, L, C) hold those image tokens at the image-placeholder positions of each row.

Each layout object is a core "reshape object": ``layout(activations) -> (N, C, h, w)``,
``layout.gradients((T, *activations.shape)) -> (N, T, C, h, w)`` and ``describe()``. What it
needs from the pass (the images' grids, the window order, the placeholder positions) is set by
the scorer right before each forward and kept per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...errors import InputError
from .llava import ImageTokenRows


@dataclass(frozen=True)
class PassLayout:
    """What one forward pass put where: per image its patch grid (h, w); the tower's window
    order (``window_index`` of m * m units, Qwen2.5-VL) or None; the language model's rows,
    each row's image placeholders and image recorded (``rows``)."""

    grids: tuple[tuple[int, int], ...]
    window_index: Tensor | None = None
    rows: ImageTokenRows | None = None


@dataclass(eq=False)
class PassState:
    """The last pass's layout, per thread (several threads may share one adapter)."""

    local: threading.local = field(default_factory=threading.local)

    def set(self, layout: PassLayout) -> None:
        self.local.layout = layout

    def get(self) -> PassLayout:
        layout = getattr(self.local, "layout", None)
        if layout is None:
            raise RuntimeError("no Qwen-VL forward pass has run in this thread; the layout is set by the scorer's score()")
        return layout


@dataclass(eq=False)
class VisionTokens:
    """The vision tower's tokens (S, C) of all images (``merged=False``: a block's output, one
    token per patch, grid (h, w)) or the merger's (``merged=True``: one per m x m window, grid
    (h / m, w / m)), in the tower's order, mapped to (N, C, grid)."""

    merge_size: int
    merged: bool
    state: PassState = field(default_factory=PassState)

    def __call__(self, activations: Tensor) -> Tensor:
        return self._grids(activations)

    def gradients(self, gradients: Tensor) -> Tensor:
        """(T, S, C) -> (N, T, C, h, w)."""
        return self._grids(gradients)

    def describe(self) -> str:
        height, width = self._cell_grid(self.state.get().grids[0])
        what = "merged image tokens" if self.merged else "vision patch tokens"
        return f"{what} {height}x{width}, merge-window order"

    def _cell_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        m = self.merge_size if self.merged else 1
        return grid[0] // m, grid[1] // m

    def _grids(self, tokens: Tensor) -> Tensor:
        """(*lead, S, C) -> (N, *lead, C, h, w)."""
        layout = self.state.get()
        unit = 1 if self.merged else self.merge_size**2  # tokens per merge window
        if layout.window_index is not None:
            restore = torch.argsort(layout.window_index.to(tokens.device))
            order = (restore[:, None] * unit + torch.arange(unit, device=tokens.device)).flatten()
            tokens = tokens.index_select(-2, order)
        counts = [height * width * unit // self.merge_size**2 for height, width in layout.grids]
        if sum(counts) != tokens.shape[-2]:
            raise ValueError(f"{tokens.shape[-2]} vision tokens where the pass's images make {sum(counts)}")
        grids = [self._image_grid(part, grid) for part, grid in zip(tokens.split(counts, dim=-2), layout.grids, strict=True)]
        return _stack(grids)

    def _image_grid(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """One image's (*lead, k, C) tokens in merge-window order -> (*lead, C, h, w)."""
        lead, channels = tokens.shape[:-2], tokens.shape[-1]
        m = self.merge_size
        if self.merged:
            height, width = self._cell_grid(grid)
            return tokens.reshape(*lead, height, width, channels).movedim(-1, -3)
        height, width = grid
        windows = tokens.reshape(*lead, height // m, width // m, m, m, channels)
        rank = len(lead)
        # (..., h/m, w/m, m, m, C) -> (..., C, h/m, m, w/m, m)
        order = [*range(rank), rank + 4, rank, rank + 2, rank + 1, rank + 3]
        return windows.permute(order).reshape(*lead, channels, height, width)


@dataclass(eq=False)
class LanguageTokens:
    """A language-model layer's hidden states (B, L, C) at the image placeholders of each row,
    on the merged grid (h / m, w / m) of the pass's images: LLaVA's
    :class:`~mmcam.adapters.hf.llava.ImageTokenRows` of the last pass (its grid depends on the
    images' size), which shares an image's activations among its rows and sums its rows'
    gradients."""

    state: PassState = field(default_factory=PassState)

    def __call__(self, activations: Tensor) -> Tensor:
        return self._rows()(activations)

    def gradients(self, gradients: Tensor) -> Tensor:
        """(T, B, L, C) -> (N, T, C, h / m, w / m)."""
        return self._rows().gradients(gradients)

    def describe(self) -> str:
        return self._rows().describe()

    def _rows(self) -> ImageTokenRows:
        rows = self.state.get().rows
        if rows is None:
            raise RuntimeError("the last Qwen-VL pass recorded no language-model rows")
        return rows


def _stack(grids: Sequence[Tensor]) -> Tensor:
    shapes = {tuple(grid.shape) for grid in grids}
    if len(shapes) > 1:
        raise InputError("images of different sizes in one Qwen-VL pass; explain them in separate calls")
    return torch.stack(list(grids))
