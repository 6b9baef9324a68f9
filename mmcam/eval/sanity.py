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
from skimage.metrics import structural_similarity
from torch import nn
from tqdm.auto import tqdm

from .faithfulness import rank_correlation

MapsFn = Callable[[Any], dict[str, np.ndarray]]  # adapter -> {map name: maps (K, H, W)}


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, from the output end to the input end (reverse
    registration order)."""
    names = [name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))]
    return names[::-1]


def explained_model(adapter: Any, depth: int = 3) -> nn.Module:
    """The module an adapter explains, found among its attributes without knowing the adapter's
    type: ``adapter.model`` for a classifier, ``adapter.scorer.model`` for a captioner or VQA
    model (shipped, ``hf:`` or your own scorer). The first :class:`~torch.nn.Module` reached,
    breadth-first over attributes up to ``depth`` levels down, that is not part of another one
    found; ValueError when there is none, or several unrelated ones (say which with
    ``model_of``)."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    level: list[tuple[str, Any]] = [("adapter", adapter)]
    for _ in range(depth):
        below: list[tuple[str, Any]] = []
        for path, holder in level:
            for name, value in _attributes(holder):
                if id(value) in seen:
                    continue
                seen.add(id(value))
                if isinstance(value, nn.Module):
                    found.append((f"{path}.{name}", value))
                elif hasattr(value, "__dict__") and not isinstance(value, type):
                    below.append((f"{path}.{name}", value))
        level = below
    owned = {id(inner) for _, module in found for inner in module.modules() if inner is not module}
    roots = [(path, module) for path, module in found if id(module) not in owned and any(True for _ in module.parameters())]
    if len({id(module) for _, module in roots}) != 1:
        named = ", ".join(path for path, _ in roots) or "none"
        raise ValueError(f"cannot tell which module {type(adapter).__name__} explains (found: {named})")
    return roots[0][1]


def _attributes(holder: Any) -> list[tuple[str, Any]]:
    try:
        return list(vars(holder).items())
    except TypeError:  # no __dict__ (slots, builtins)
        return []


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


def ssim(first: np.ndarray, second: np.ndarray) -> float:
    """Structural similarity of two maps (H, W) in [0, 1]: scikit-image's
    ``structural_similarity`` with Wang et al.'s (2004) settings (Gaussian window, sigma 1.5,
    population covariance, K1 = 0.01, K2 = 0.03, data range 1), the mean over the image away
    from the borders the window does not cover."""
    return float(
        structural_similarity(
            first.astype(np.float64), second.astype(np.float64),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        )
    )


def cascading_randomization(
    adapter: Any,
    maps_of: MapsFn,
    *,
    model_of: Callable[[Any], nn.Module] = explained_model,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, dict[str, list]]:
    """Per map name: ``randomized_spearman`` and ``randomized_ssim``, lists with one value per
    step (the mean over all maps of the evaluation items), and ``layers``, the layer
    re-initialised at each step: every module of ``model_of(adapter)`` that owns parameters
    (default: the module the adapter explains, found by :func:`explained_model`).
    ``maps_of(adapter)`` computes the maps for a fixed set of items and targets; the adapter is
    deep-copied, the original is never touched."""
    trained = maps_of(adapter)
    randomized = copy.deepcopy(adapter)
    model = model_of(randomized)
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    layers = parameter_layers(model)
    results: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for layer in tqdm(layers, desc="sanity", disable=not show_progress):
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
