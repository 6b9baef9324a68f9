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


@dataclass(frozen=True)
class PassLayout:
    """What one forward pass put where: per image its patch grid (h, w); the tower's window
    order (``window_index`` of m * m units, Qwen2.5-VL) or None; per language-model row the
    image it reads (``owners``) and the positions of its image placeholders (``placeholders``,
    (B, L) bool)."""

    grids: tuple[tuple[int, int], ...]
    window_index: Tensor | None = None
    owners: tuple[int, ...] = ()
    placeholders: Tensor | None = None


@dataclass(eq=False)
class _PassState:
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
    state: _PassState = field(default_factory=_PassState)

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
        unit = 1 if self.merged else self.merge_size**2
        if layout.window_index is not None:
            restore = torch.argsort(layout.window_index.to(tokens.device))
            order = (restore[:, None] * unit + torch.arange(unit, device=tokens.device)).flatten()
            tokens = tokens.index_select(-2, order)
        counts = [height * width // (self.merge_size**2 // unit) for height, width in layout.grids]
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
    on the merged grid (h / m, w / m) of the row's image. Rows that read the same image (one
    per candidate answer) share its activations at those positions (they come before any
    answer token, and the model is causal); each target's gradient is the sum over its image's
    rows (a target reads one row, so the others add zero)."""

    merge_size: int
    state: _PassState = field(default_factory=_PassState)

    def __call__(self, activations: Tensor) -> Tensor:
        layout = self.state.get()
        first = [layout.owners.index(n) for n in range(len(layout.grids))]
        return _stack([self._image_grid(activations[row], row, layout) for row in first])

    def gradients(self, gradients: Tensor) -> Tensor:
        """(T, B, L, C) -> (N, T, C, h, w)."""
        layout = self.state.get()
        images = []
        for n in range(len(layout.grids)):
            rows = [row for row, owner in enumerate(layout.owners) if owner == n]
            images.append(sum(self._image_grid(gradients[:, row], row, layout) for row in rows))
        return _stack(images)

    def describe(self) -> str:
        height, width = (side // self.merge_size for side in self.state.get().grids[0])
        return f"language-model hidden states at the image tokens {height}x{width}"

    def _image_grid(self, hidden: Tensor, row: int, layout: PassLayout) -> Tensor:
        """Row ``row``'s (*lead, L, C) states at its placeholders -> (*lead, C, h / m, w / m)."""
        height, width = (side // self.merge_size for side in layout.grids[layout.owners[row]])
        positions = layout.placeholders[row].nonzero().flatten().to(hidden.device)
        if positions.numel() != height * width:
            raise ValueError(f"row {row} holds {positions.numel()} image tokens where its image makes {height * width}")
        tokens = hidden.index_select(-2, positions)
        return tokens.reshape(*tokens.shape[:-2], height, width, tokens.shape[-1]).movedim(-1, -3)


def _stack(grids: Sequence[Tensor]) -> Tensor:
    shapes = {tuple(grid.shape) for grid in grids}
    if len(shapes) > 1:
        raise InputError("images of different sizes in one Qwen-VL pass; explain them in separate calls")
    return torch.stack(list(grids))
