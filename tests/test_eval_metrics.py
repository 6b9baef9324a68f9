"""Metrics on tiny cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from mmcam.core.localize import localization_box, peak_xy
from mmcam.eval.pointing import (
    box_mask,
    center_map,
    energy_inside,
    expected_uniform_pointing,
    grow_box,
    grow_mask,
    inside_outside_ratio,
    pointing_hit,
    random_map,
    uniform_map,
)

SHAPE = (40, 60)


def test_a_map_equal_to_the_object_mask_scores_perfectly() -> None:
    mask = box_mask((10, 5, 19, 14), SHAPE)
    heatmap = mask.astype(np.float32)
    assert pointing_hit(heatmap, mask)
    assert energy_inside(heatmap, mask) == 1.0
    assert inside_outside_ratio(heatmap, mask) == float("inf")
    assert inside_outside_ratio(heatmap + 0.1, mask) == pytest.approx(1.1 / 0.1)
    assert inside_outside_ratio(uniform_map(SHAPE), mask) == 1.0
    assert energy_inside(uniform_map(SHAPE), mask) == pytest.approx(100 / 2400)
    assert expected_uniform_pointing(mask) == pytest.approx(100 / 2400)


def test_pointing_misses_outside_and_empty_maps_point_nowhere() -> None:
    mask = box_mask((10, 5, 19, 14), SHAPE)
    heatmap = np.zeros(SHAPE, dtype=np.float32)
    assert not pointing_hit(heatmap, mask)
    heatmap[30, 50] = 1.0
    assert not pointing_hit(heatmap, mask)
    assert pointing_hit(heatmap, box_mask(grow_box((10, 5, 48, 28), 2, SHAPE), SHAPE))


def test_grow_box_and_mask() -> None:
    assert grow_box((0, 5, 58, 14), 6, SHAPE) == (0, 0, 59, 20)
    mask = np.zeros((7, 7), dtype=bool)
    mask[3, 3] = True
    assert grow_mask(mask, 2).sum() == 25


def test_localization_box_of_a_synthetic_blob_is_exact() -> None:
    heatmap = np.zeros(SHAPE, dtype=np.float32)
    heatmap[12:20, 30:45] = 1.0        # the blob: x 30-44, y 12-19
    heatmap[2:4, 2:4] = 0.5           # a smaller separate segment above threshold
    heatmap[30:35, 5:10] = 0.1        # below 15% of the maximum: ignored
    assert localization_box(heatmap) == (30, 12, 44, 19)
    assert peak_xy(heatmap) == (30, 12)
    assert localization_box(np.zeros(SHAPE)) is None


def test_localization_threshold_is_fifteen_percent_of_the_maximum() -> None:
    heatmap = np.zeros((10, 10))
    heatmap[2:8, 2:8] = 0.15
    heatmap[4:6, 4:6] = 1.0
    assert localization_box(heatmap) == (2, 2, 7, 7)
    heatmap[2:8, 2:8][heatmap[2:8, 2:8] == 0.15] = 0.149
    assert localization_box(heatmap) == (4, 4, 5, 5)


def test_baselines() -> None:
    centre = center_map(SHAPE)
    assert np.unravel_index(centre.argmax(), SHAPE) in {(19, 29), (19, 30), (20, 29), (20, 30)}
    first, second = random_map(SHAPE, np.random.default_rng(0)), random_map(SHAPE, np.random.default_rng(0))
    assert np.array_equal(first, second) and first.shape == SHAPE and 0 <= first.min() <= first.max() <= 1


def test_deletion_auc_of_a_perfect_map_is_below_a_random_maps() -> None:
    import torch

    from mmcam.eval.faithfulness import deletion_insertion, occlusion_map, pool_to_grid, rank_correlation

    region = torch.zeros(28, 28, dtype=torch.bool)
    region[4:12, 6:14] = True

    def score(images):  # the evidence the "model" uses: the region's brightness
        return images[:, :, region].mean(dim=(1, 2))

    image = torch.full((3, 28, 28), 0.5)
    image[:, region] = 1.0
    perfect = region.numpy().astype(np.float32)
    random = random_map((28, 28), np.random.default_rng(0))
    perfect_deletion, perfect_insertion, curve, _ = deletion_insertion(score, image, perfect, steps=14)
    random_deletion, random_insertion, _, _ = deletion_insertion(score, image, random, steps=14)
    assert curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(0.0)
    assert perfect_deletion < 0.1 < random_deletion
    assert perfect_insertion > random_insertion
    occlusion = occlusion_map(score, image, grid=7)
    assert rank_correlation(pool_to_grid(perfect, 7), occlusion) > 0.9


def test_randomising_all_layers_changes_gradcam_maps() -> None:
    import torch

    from conftest import TinyCNN
    from mmcam import ClassTarget, GradCAM
    from mmcam.eval.sanity import cascading_randomization, parameter_layers

    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16)

    class Holder:
        def __init__(self) -> None:
            self.model = TinyCNN().eval()

    def maps_of(holder) -> dict[str, np.ndarray]:
        with GradCAM(holder.model, "relu2") as cam:
            return {"gradcam": cam(images, [ClassTarget(1)])[:, 0].numpy()}

    holder = Holder()
    before = {name: value.clone() for name, value in holder.model.state_dict().items()}
    result = cascading_randomization(holder, maps_of)["gradcam"]  # finds holder.model by itself
    assert result["layers"] == parameter_layers(holder.model) == ["head", "mix", "conv2", "conv1"]
    assert len(result["randomized_spearman"]) == 4
    assert result["randomized_ssim"][-1] < 0.9
    assert all(torch.equal(before[name], value) for name, value in holder.model.state_dict().items())


def _ssim_by_hand(first: np.ndarray, second: np.ndarray) -> float:
    """Wang et al. (2004), eq. 13 with an 11x11 Gaussian window (sigma 1.5, cut at 3.5 sigma),
    population (co)variances, C1 = (0.01)^2, C2 = (0.03)^2 for data in [0, 1]; the mean over
    pixels whose window lies inside the image."""
    from scipy import ndimage

    def smooth(values: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(values, 1.5, truncate=3.5)

    a, b = first.astype(np.float64), second.astype(np.float64)
    mean_a, mean_b = smooth(a), smooth(b)
    var_a, var_b = smooth(a * a) - mean_a**2, smooth(b * b) - mean_b**2
    covariance = smooth(a * b) - mean_a * mean_b
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return float(index[5:-5, 5:-5].mean())


def test_ssim_agrees_with_a_hand_computation_on_noisy_pairs() -> None:
    """A smooth map and noisier copies of it: SSIM equals Wang et al.'s formula computed here
    (1e-9), falls as the noise grows, and is 1 only for the map itself."""
    from mmcam.eval.sanity import ssim

    rng = np.random.default_rng(0)
    heatmap = random_map((48, 64), rng)
    values = []
    for noise in (0.0, 0.05, 0.2, 0.5):
        noisy = np.clip(heatmap + rng.normal(0, noise, heatmap.shape), 0, 1)
        values.append(ssim(heatmap, noisy))
        assert values[-1] == pytest.approx(_ssim_by_hand(heatmap, noisy), abs=1e-9), noise
    assert values[0] == pytest.approx(1.0) and values == sorted(values, reverse=True) and values[-1] < 0.3
    other = random_map((48, 64), rng)
    assert ssim(heatmap, other) == pytest.approx(_ssim_by_hand(heatmap, other), abs=1e-9)
