"""CAM methods as functions of the hooked activations and their gradients.

Every method takes activations ``A`` of shape (N, C, h, w) and gradients ``G = dy/dA`` of shape
(N, T, C, h, w), one per target, and returns raw maps (N, T, h, w). Adding a method means adding
one function to :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import InputError

CamMethod = Callable[[Tensor, Tensor], Tensor]

_EPS = 1e-7


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(sum_k w_k^c A^k) for weights (N, T, C) and activations (N, C, h, w)."""
    return torch.relu(torch.einsum("ntc,nchw->nthw", weights, activations))


def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017, eq. 1-2).

    alpha_k^c = 1/Z sum_ij dy^c/dA^k_ij;  L^c = ReLU(sum_k alpha_k^c A^k).
    """
    return _weighted_sum(gradients.mean(dim=(-2, -1)), activations)


def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): L^c = ReLU(sum_k dy^c/dA^k (.) A^k), no spatial average."""
    return torch.relu((gradients * activations.unsqueeze(1)).sum(dim=2))


def gradcam_plus_plus(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential-output closed form).

    a_ij = g^2 / (2 g^2 + sum_ab A_ab g^3);  w_k = sum_ij a_ij ReLU(g_ij);  L = ReLU(sum_k w_k A^k).
    """
    squared = gradients.pow(2)
    cubed = gradients.pow(3)
    activation_sums = activations.sum(dim=(-2, -1))[:, None, :, None, None]
    denominator = 2 * squared + activation_sums * cubed
    alpha = torch.where(gradients != 0, squared / torch.where(denominator != 0, denominator, _EPS), 0.0)
    weights = (alpha * torch.relu(gradients)).sum(dim=(-2, -1))
    return _weighted_sum(weights, activations)


def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): w_k = sum_ij (A^k_ij / sum_ab A^k_ab) dy/dA^k_ij."""
    normalised = activations / (activations.sum(dim=(-2, -1), keepdim=True) + _EPS)
    weights = (gradients * normalised.unsqueeze(1)).sum(dim=(-2, -1))
    return _weighted_sum(weights, activations)


def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """LayerCAM (Jiang et al. 2021): L^c = ReLU(sum_k ReLU(dy^c/dA^k) (.) A^k)."""
    return torch.relu((torch.relu(gradients) * activations.unsqueeze(1)).sum(dim=2))


METHODS: dict[str, CamMethod] = {
    "gradcam": gradcam,
    "hirescam": hirescam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
}


def get_method(name: str) -> CamMethod:
    """The method called ``name``; unknown names raise an error listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None
