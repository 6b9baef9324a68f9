"""``mmcam.load``: a ready adapter for a shipped model, a timm/torchvision name, or a path."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .io import InputError

Loader = Callable[..., Any]
_SHIPPED: dict[str, Loader] = {}
_VISION_LANGUAGE = {"shapes-llava"}  # shipped models that caption and answer questions


def shipped(name: str) -> Callable[[Loader], Loader]:
    """Register a loader for a model that ships with mmcam (no download)."""

    def register(loader: Loader) -> Loader:
        _SHIPPED[name] = loader
        return loader

    return register


def available_models() -> list[str]:
    """Names of the shipped models."""
    _register_builtin()
    return sorted(_SHIPPED)


def load(
    name_or_path: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    layer: str | None = None,
    task: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> Any:
    """A ready adapter: model, preprocessing, layer and target builders, with ``explain``.

    ``name_or_path`` is a shipped model (see :func:`available_models`), a timm or torchvision
    model name (random weights unless ``weights`` names a local state-dict file: nothing is
    downloaded), or ``hf:ID_OR_PATH`` for a transformers checkpoint. ``task`` (``"caption"`` or
    ``"vqa"``) picks the task of a vision-language model that does both (``shapes-llava``, an
    ``hf:`` LLaVA folder); other models have one task and ignore it. An ``hf:`` checkpoint also
    takes ``dtype``, ``device_map`` and ``offload_folder`` (see :func:`mmcam.adapters.hf.load_hf`).
    """
    _register_builtin()
    name = str(name_or_path)
    loading = {"dtype": dtype, "device_map": device_map, "offload_folder": offload_folder}
    given = sorted(option for option, value in loading.items() if value is not None)
    if given and not name.startswith("hf:"):
        raise InputError(f"{', '.join(given)}: options of hf: checkpoints only, not of {name!r}")
    if name in _SHIPPED:
        loader = _SHIPPED[name]
        return loader(layer=layer, task=task) if name in _VISION_LANGUAGE else loader(layer=layer)
    if name.startswith("hf:"):
        from .adapters.hf import load_hf

        if task and "?" not in name:
            name = f"{name}?task={task}"  # a VLM does both tasks; any other hf: model must do this one
        return load_hf(name[3:], layer=layer, **loading)
    model = _timm_or_torchvision(name)
    if model is None:
        raise InputError(
            f"unknown model {name!r}; available: {', '.join(available_models())}, any timm or "
            "torchvision model name, or hf:ID_OR_PATH"
        )
    if weights is None:
        warnings.warn(
            f"{name} has RANDOM weights (mmcam downloads nothing); pass weights=FILE "
            "(CLI: --weights FILE) with a local state dict for a trained model",
            stacklevel=2,
        )
    else:
        _load_weights(model, Path(weights))
    from mmcam.models.efficientnet_lite0 import IMAGENET_MEAN, IMAGENET_STD, imagenet_labels

    from .adapters.classifier import ClassifierAdapter

    classes = getattr(model, "num_classes", None) or _output_classes(model)
    labels = imagenet_labels() if classes == 1000 else [f"class {i}" for i in range(classes)]
    return ClassifierAdapter(model.eval(), name, labels, IMAGENET_MEAN, IMAGENET_STD, layer=layer)


def _timm_or_torchvision(name: str) -> torch.nn.Module | None:
    import timm
    import torchvision

    if name in timm.list_models():
        return timm.create_model(name, pretrained=False)
    if name in torchvision.models.list_models():
        return torchvision.models.get_model(name, weights=None)
    return None


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise InputError(f"weights in {path} do not fit the model: {first}") from None


def _output_classes(model: torch.nn.Module) -> int:
    with torch.no_grad():
        return int(model.eval()(torch.zeros(1, 3, 224, 224)).shape[-1])


_BUILTIN_REGISTERED = False


def _register_builtin() -> None:
    global _BUILTIN_REGISTERED
    if _BUILTIN_REGISTERED:
        return
    _BUILTIN_REGISTERED = True
    from . import shipped_models  # noqa: F401  (registers the shipped loaders)
