"""Hand-computed values of every CAM method on a model whose gradients are known exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcam import ClassTarget, GradCAM
from mmcam.core.maps import normalize, upsample

# Activations A (1, 2, 2, 2) are the input itself; y = sum_kij W_kij A_kij, so dy/dA = W.
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, -1.0], [2.0, 0.0]]]])
W = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]])


class LinearOnGrid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(8, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(W.reshape(1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


EXPECTED = {
    # alpha = mean W = (0.5, 0.5): 0.5*A0 + 0.5*A1
    "gradcam": [[0.5, 0.5], [2.5, 2.0]],
    # ReLU(W0*A0 + W1*A1) = ReLU([[1, -2], [0, 4]])
    "hirescam": [[1.0, 0.0], [0.0, 4.0]],
    "layercam": [[1.0, 0.0], [0.0, 4.0]],
    # w = sum(W*A)/sum(A) = (5/10, -2/1): 0.5*A0 - 2*A1
    "xgradcam": [[0.5, 3.0], [0.0, 2.0]],
    # alpha_k0 = 1/(2+10) where W0=1, alpha_k1 = 4/(8+8) where W1=2; w = (2/12, 0.5)
    "gradcam++": [[1 / 6, 0.0], [1.5, 2 / 3]],
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_raw_maps_equal_hand_computed_values(method: str) -> None:
    with GradCAM(LinearOnGrid(), "features", method=method) as cam:
        maps = cam(A, [ClassTarget(0)], upsample=False, normalize=False)
    assert maps.shape == (1, 1, 2, 2)
    torch.testing.assert_close(maps[0, 0], torch.tensor(EXPECTED[method]), rtol=0, atol=1e-6)


def test_counterfactual_negates_gradients() -> None:
    with GradCAM(LinearOnGrid(), "features") as cam:
        counter = cam(A, [ClassTarget(0)], upsample=False, normalize=False, counterfactual=True)
        hires = cam(A, [ClassTarget(0)], upsample=False, normalize=False, counterfactual=True, method="hirescam")
    # -0.5*A0 - 0.5*A1 is negative everywhere; ReLU(-[[1,-2],[0,4]]) keeps the 2.
    assert torch.equal(counter[0, 0], torch.zeros(2, 2))
    torch.testing.assert_close(hires[0, 0], torch.tensor([[0.0, 2.0], [0.0, 0.0]]))


def test_upsampling_is_bilinear_without_corner_alignment() -> None:
    small = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    big = upsample(small, (4, 4))
    # Half-pixel centres: output pixel 0 samples input coordinate -0.25 -> clamped to 0.
    expected_row0 = torch.tensor([0.0, 0.25, 0.75, 1.0])
    torch.testing.assert_close(big[0], expected_row0)
    torch.testing.assert_close(big[:, 0], expected_row0 * 2)


def test_normalize_scales_by_max_and_keeps_zero_maps_zero() -> None:
    maps = torch.stack([torch.tensor([[0.0, 2.0], [1.0, 4.0]]), torch.zeros(2, 2)])
    scaled = normalize(maps)
    torch.testing.assert_close(scaled[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(scaled[1], torch.zeros(2, 2))
    assert torch.isfinite(scaled).all()


def test_default_output_is_upsampled_to_input_and_normalised() -> None:
    image = torch.nn.functional.interpolate(A, size=(2, 2))
    with GradCAM(LinearOnGrid(), "features") as cam:
        maps = cam(image, [ClassTarget(0)])
    expected = normalize(upsample(torch.tensor(EXPECTED["gradcam"]), (2, 2)))
    torch.testing.assert_close(maps[0, 0], expected)
    assert maps.max() == 1.0
