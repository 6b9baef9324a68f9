"""CAM methods as functions of the hooked activations and their gradients.

Every method takes activations ``A`` of shape (N, C, h, w) and gradients ``G = dy/dA`` of shape
(N, T, C, h, w), one per target, and returns raw maps (N, T, h, w). Adding a method means adding
one function to :data:`METHODS`.
"""

from __future__ import annotations

import warnings
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

    The closed form assumes non-negative activations (post-ReLU features). With signed ones
    (transformer layers) the denominator can reach zero or turn negative where g > 0, which would
    blow a weight up or flip its sign: there a_ij is set to 0, and a warning says the layer is
    signed.
    """
    _warn_if_signed(activations, "gradcam++")
    squared = gradients.pow(2)
    cubed = gradients.pow(3)
    activation_sums = activations.sum(dim=(-2, -1))[:, None, :, None, None]
    denominator = 2 * squared + activation_sums * cubed
    valid = (gradients != 0) & (denominator > _EPS * squared.clamp(min=_EPS))
    alpha = torch.where(valid, squared / torch.where(valid, denominator, 1.0), 0.0)
    weights = (alpha * torch.relu(gradients)).sum(dim=(-2, -1))
    return _weighted_sum(weights, activations)


def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): w_k = sum_ij (A^k_ij / sum_ab A^k_ab) dy/dA^k_ij.

    The normalisation assumes non-negative activations; a signed channel whose sum is near zero
    would get an unbounded weight, so such channels (|sum| <= 1e-7) get weight 0, and signed
    layers are warned about.
    """
    _warn_if_signed(activations, "xgradcam")
    sums = activations.sum(dim=(-2, -1), keepdim=True)
    usable = sums.abs() > _EPS
    normalised = torch.where(usable, activations / torch.where(usable, sums, 1.0), 0.0)
    weights = (gradients * normalised.unsqueeze(1)).sum(dim=(-2, -1))
    return _weighted_sum(weights, activations)


def _warn_if_signed(activations: Tensor, name: str) -> None:
    if (activations < 0).any():
        warnings.warn(
            f"{name} assumes non-negative activations, but this layer's are signed (a transformer "
            "or pre-activation layer): its weights are unreliable there; gradcam or hirescam do not "
            "assume it",
            stacklevel=4,
        )


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
