"""Adebayo et al. (2018), cascading model-parameter randomisation: re-initialise the model's
layers from the output down, one more at each step, recompute the maps, and measure how similar
they stay to the trained model's maps. A method that explains the model should lose similarity;
one that mostly reflects the image (Guided Backprop is known to) keeps it."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from .faithfulness import rank_correlation
from .progress import progress

MapsFn = Callable[[Any], dict[str, np.ndarray]]  # adapter -> {map name: maps (K, H, W)}


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, from the output end to the input end (reverse
    registration order)."""
    names = [name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))]
    return names[::-1]


def _reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh random parameters for one module (its own ``reset_parameters`` under a seeded
    global RNG when it has one, else a normal draw scaled like the old values)."""
    if hasattr(module, "reset_parameters"):
        state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        try:
            module.reset_parameters()
        finally:
            torch.random.set_rng_state(state)
        return
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            scale = float(parameter.std()) if parameter.numel() > 1 else 0.02
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * (scale or 0.02))


def ssim(first: np.ndarray, second: np.ndarray, sigma: float = 1.5) -> float:
    """Structural similarity of two maps in [0, 1] (Wang et al. 2004, Gaussian window)."""
    c1, c2 = 0.01**2, 0.03**2
    a, b = first.astype(np.float64), second.astype(np.float64)
    mean_a, mean_b = ndimage.gaussian_filter(a, sigma), ndimage.gaussian_filter(b, sigma)
    var_a = ndimage.gaussian_filter(a * a, sigma) - mean_a**2
    var_b = ndimage.gaussian_filter(b * b, sigma) - mean_b**2
    covariance = ndimage.gaussian_filter(a * b, sigma) - mean_a * mean_b
    index = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def cascading_randomization(
    adapter: Any,
    maps_of: MapsFn,
    *,
    model_of: Callable[[Any], nn.Module],
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, dict[str, list]]:
    """Per map name: ``randomized_spearman`` and ``randomized_ssim``, lists with one value per
    step (the mean over all maps of the evaluation items), and ``layers``, the layer
    re-initialised at each step. ``maps_of(adapter)`` computes the maps for a fixed set of items
    and targets; the adapter is deep-copied, the original is never touched."""
    trained = maps_of(adapter)
    randomized = copy.deepcopy(adapter)
    model = model_of(randomized)
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    layers = parameter_layers(model)
    results: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for layer in progress(layers, "sanity", total=len(layers), enabled=show_progress):
        _reinitialise(modules[layer], generator)
        current = maps_of(randomized)
        for name, reference in trained.items():
            pairs = list(zip(reference, current[name], strict=True))
            correlations = np.array([rank_correlation(a, b) for a, b in pairs])
            defined = correlations[~np.isnan(correlations)]  # nan: a constant (e.g. all-zero) map
            results[name]["randomized_spearman"].append(float(defined.mean()) if defined.size else float("nan"))
            results[name]["randomized_ssim"].append(float(np.mean([ssim(a, b) for a, b in pairs])))
            results[name]["layers"].append(layer)
    return {name: dict(metrics) for name, metrics in results.items()}


def captioner_maps(scenes: Sequence, methods: Sequence[str]) -> MapsFn:
    """Maps of every colour/shape word of ``scenes`` (ground-truth captions)."""
    from .grounding import scene_word_maps

    def maps_of(adapter) -> dict[str, np.ndarray]:
        collected: dict[str, list[np.ndarray]] = defaultdict(list)
        for scene in scenes:
            _, maps = scene_word_maps(adapter, scene, methods)
            for name, stack in maps.items():
                if name != "attention":
                    collected[name].extend(stack)
        return {name: np.stack(stack) for name, stack in collected.items()}

    return maps_of


def vqa_maps(adapter_items: Sequence, methods: Sequence[str], answers: Sequence[int]) -> MapsFn:
    """Maps of fixed answers (the trained model's predictions) for VQA items."""
    from .answers import batch_answer_maps

    def maps_of(adapter) -> dict[str, np.ndarray]:
        _, maps = batch_answer_maps(adapter, adapter_items, methods, answers)
        return maps

    return maps_of
