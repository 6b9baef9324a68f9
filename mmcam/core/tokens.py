"""Token layouts: (B, N, C) activations of transformer encoders reshaped to a (B, C, h, w) grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from .layout import Layout


@dataclass(frozen=True)
class TokenGrid:
    """Reshape transform for token activations.

    ``drop`` leading tokens (a CLS token, register tokens) are removed and the rest are laid out
    row by row on a ``grid`` of (h, w); with ``grid=None`` the grid is square. Gradients pass
    through the same transform, so a method sees (B, C, h, w) for both.
    """

    drop: int = 0
    grid: tuple[int, int] | None = None

    def __call__(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3:
            raise ValueError(f"expected token activations (B, N, C), got shape {tuple(tokens.shape)}")
        count = tokens.shape[1] - self.drop
        height, width = self.grid if self.grid is not None else _square(count)
        if height * width != count:
            raise ValueError(
                f"{count} tokens (after dropping {self.drop}) do not fill a {height}x{width} grid"
            )
        return Layout("tokens", (height, width), self.drop)(tokens)


def _square(count: int) -> tuple[int, int]:
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{count} tokens do not form a square grid; give grid=(h, w) or drop=")
    return side, side
