"""Token layouts of vision transformers: (B, N, C) activations back onto the image's patch grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ...core import TokenGrid


@dataclass(frozen=True)
class PatchTokens:
    """Reshape transform for any layer of a vision encoder whose input is ``size`` (H, W).

    Token activations (B, N, C) go through :class:`~mmcam.TokenGrid`: the leading tokens that do
    not fit the patch grid (CLS, DeiT's distillation token) are dropped and the rest laid out on
    the grid of :func:`grid_of`. That covers ViT and CLIP layers (1 + h*w tokens) and Swin stages
    (h*w tokens at a coarser stride). (B, C, h, w) maps, from a patch convolution or a CNN
    stage, pass unchanged.
    """

    size: tuple[int, int]

    def __call__(self, activations: Tensor) -> Tensor:
        if activations.dim() == 4:
            return activations
        if activations.dim() != 3:
            raise ValueError(f"expected (B, N, C) tokens or a (B, C, h, w) map, got shape {tuple(activations.shape)}")
        extra, height, width = grid_of(activations.shape[1], self.size)
        return TokenGrid(drop=extra, grid=(height, width))(activations)


def grid_of(tokens: int, size: tuple[int, int], max_extra: int = 4) -> tuple[int, int, int]:
    """(leading tokens, h, w): the patch grid that ``tokens`` activations of an image of ``size``
    (H, W) form after dropping 0..``max_extra`` leading tokens.

    The grid keeps the image's aspect ratio with an integer stride s: H = h * s, W = w * s.
    """
    height, width = size
    for extra in range(max_extra + 1):
        count = tokens - extra
        if count <= 0:
            break
        stride = math.sqrt(height * width / count)
        rounded = round(stride)
        if rounded > 0 and abs(stride - rounded) < 1e-6 and height % rounded == 0 and width % rounded == 0:
            return extra, height // rounded, width // rounded
    raise ValueError(
        f"{tokens} tokens do not form a patch grid of a {height}x{width} image; hook a layer of "
        "the vision encoder (--layer)"
    )
