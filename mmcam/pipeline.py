"""The one explanation pipeline every adapter feeds.

An adapter says what y^c is: the model inputs for a minibatch, the targets (the T explained
ones first, then any contrasts), and per image the labels of its targets. The pipeline runs one
forward pass and the batched backward passes (:func:`run_pass`), then turns the gradient record
into one :class:`~mmcam.explanation.Explanation` per image (:func:`explanations`), holding maps at
the layer's native grid; full-size maps are made on demand by the explanation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .core import GradCAM, GradientRecord
from .core.gradcam import LAZY, Inputs, LazyGuided, Reshape, Target, map_tensors
from .core.layers import LayerSpec
from .core.maps import raw_maps, split_method
from .errors import InputError
from .explanation import Explanation
from .io import LoadedImage

# Explaining also computes the counterfactual maps (negated gradients): they cost no extra pass.
DEFAULT_COUNTERFACTUAL = True
# Guided Backprop is computed when an explanation first needs it (a guided_ method's maps, Guided
# Grad-CAM images, saving): one more forward pass then, and none for callers that never look.
DEFAULT_GUIDED = LAZY


@dataclass(frozen=True)
class ModelPass:
    """Where the map is taken: ``model`` holds ``layer``; ``forward`` (default: the model)
    maps the inputs to the output the targets read; ``reshape`` reads the layer's output as a
    grid (default: inferred); ``extra_layers`` also get the targets' gradients (word
    embeddings for question-word attributions)."""

    model: nn.Module
    layer: LayerSpec
    forward: Callable[..., Any] | None = None
    reshape: Reshape | None = None
    extra_layers: Sequence[str] = ()

    def engine(self, method: str) -> GradCAM:
        """The core engine for the base of ``method`` (``guided_X`` -> ``X``)."""
        base, _ = split_method(method)
        return GradCAM(
            self.model, self.layer, method=base, reshape=self.reshape, forward=self.forward, extra_layers=self.extra_layers
        )


@dataclass
class ItemLabels:
    """What an adapter says about one image of the minibatch: its T explained targets' labels
    and indices (class index, word position, answer index), task-specific ``info``, the labels
    of its contrastive targets (which follow the T explained ones), and the model's own
    attention per target at its native grid (T, h, w), when it has one."""

    image: LoadedImage
    labels: list[str]
    indices: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    contrast_labels: list[str] = field(default_factory=list)
    attention: np.ndarray | None = None


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` runs, so its inputs go there: the execution device of the accelerate hook
    a ``device_map`` put on it, else where its first parameter is (the CPU for a model without
    any). Parameters offloaded by a ``device_map`` wait on the meta device and are skipped:
    accelerate's hooks bring them, and move each module's inputs, where the module runs."""
    execution = getattr(getattr(model, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
    devices = (parameter.device for parameter in model.parameters() if parameter.device.type != "meta")
    return next(devices, torch.device("cpu"))


def same_shape_groups(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by shape, in order of first appearance: the images of a
    minibatch that can be stacked into one pass (a VLM sizes each image by its aspect ratio)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape), []).append(index)
    return list(groups.values())


def one_pass_pixels(pixels: Sequence[Tensor]) -> Tensor:
    """Preprocessed images stacked for one pass (N, C, h, w); images of different sizes are an
    :class:`~mmcam.errors.InputError` pointing to ``explain_batch``, which groups them."""
    groups = same_shape_groups(pixels)
    if len(groups) > 1:
        sizes = ", ".join("x".join(map(str, pixels[group[0]].shape[-2:])) for group in groups)
        raise InputError(f"the images preprocess to different sizes ({sizes}) and cannot share one pass; use explain_batch")
    return torch.stack(list(pixels))


def per_size(pixels: Sequence[Tensor], explain: Callable[[list[int], Tensor], list[Explanation]]) -> list[Explanation]:
    """``explain(indices, stacked pixels)`` once per group of same-size images, the explanations
    back in the images' order: one pass per processed size."""
    results: list[Explanation | None] = [None] * len(pixels)
    for group in same_shape_groups(pixels):
        for n, explanation in zip(group, explain(group, torch.stack([pixels[n] for n in group])), strict=True):
            results[n] = explanation
    return results  # type: ignore[return-value]


def run_pass(
    model_pass: ModelPass,
    inputs: Inputs,
    targets: Sequence[Target],
    *,
    method: str,
    guided: bool | str,
    explained: int | None = None,
) -> tuple[GradCAM, GradientRecord]:
    """ONE forward pass and the batched backward passes of all ``targets``; the Guided Backprop
    gradients too when ``guided`` or when ``method`` is a ``guided_`` variant, for the first
    ``explained`` targets only (default: all): contrastive targets after them get the base
    method's maps, and the costly guided pass is not paid for them. ``guided="lazy"``: the
    record computes them when first asked (:class:`~mmcam.core.gradcam.LazyGuided`). A record made on a GPU
    comes back on the CPU, a half-precision one in float32 (explanations hold NumPy arrays)."""
    cam = model_pass.engine(method)
    record = cam.gradients(inputs, targets, guided=guided or split_method(method)[1], guided_targets=explained)
    return cam, map_tensors(record, _cpu_float32)


def _cpu_float32(tensor: Tensor) -> Tensor:
    """A record's tensor on the CPU, half-precision floats (bf16/fp16 models) as float32: maps
    are made and kept in float32 (NumPy has no bfloat16)."""
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.cpu()


def explanations(
    kind: str,
    model_name: str,
    cam: GradCAM,
    record: GradientRecord,
    items: Sequence[ItemLabels],
    *,
    method: str,
    explained: int | Sequence[int],
    counterfactual: bool = DEFAULT_COUNTERFACTUAL,
) -> list[Explanation]:
    """One explanation per image of ``record``: the ``explained`` first targets' maps, their
    counterfactual maps (when asked), the maps of the contrastive targets after them, scores,
    Guided Backprop gradients when the pass had them, all at the layer's grid. ``explained``
    is one count for all images or one per image (captions of different lengths: image n's
    targets are its first ``explained[n]`` columns, its contrasts the next ones)."""
    base, _ = split_method(method)
    grid = raw_maps(record, base, layer_name=cam.layer_name).numpy()
    counter = raw_maps(record, base, counterfactual=True, layer_name=cam.layer_name).numpy() if counterfactual else None
    guided = None if record.input_gradients is None else record.input_gradients.numpy()
    counts = [explained] * len(items) if isinstance(explained, int) else list(explained)
    _warn_about_empty_maps(grid, record, items, counts, base, cam.layer_name)
    results = []
    for n, (item, count) in enumerate(zip(items, counts, strict=True)):
        contrasts = len(item.contrast_labels)
        results.append(
            Explanation(
                kind=kind,
                image=item.image,
                model=model_name,
                layer=cam.layer_name,
                method=method,
                labels=list(item.labels),
                indices=list(item.indices),
                scores=record.scores[n, :count].numpy(),
                grid_maps=grid[n, :count],
                guided_gradients=None if guided is None else guided[n, :count],
                guided_later=None if record.guided_later is None else _ItemGuided(record.guided_later, n, count),
                counterfactual_maps=None if counter is None else counter[n, :count],
                contrast_maps=grid[n, count : count + contrasts] if contrasts else None,
                contrast_labels=list(item.contrast_labels),
                attention_maps=item.attention,
                guided_activations=dict(record.guided_activations),
                info=item.info,
            )
        )
    return results


@dataclass(frozen=True)
class _ItemGuided:
    """Image ``item``'s rows of a lazily computed Guided Backprop: its first ``count`` targets."""

    source: LazyGuided
    item: int
    count: int

    def __call__(self) -> tuple[np.ndarray, dict[str, int]]:
        gradients, applied = self.source.compute()
        return gradients[self.item, : self.count].numpy(), applied


def _warn_about_empty_maps(
    grid: np.ndarray, record: GradientRecord, items: Sequence[ItemLabels], counts: Sequence[int], method: str, layer: str
) -> None:
    """Say so when a map is zero everywhere although its gradient at the layer is not (a
    ReLU'd map whose weighted sum is <= 0 at every cell: no cell raises the score; the
    counterfactual map shows what lowers it). Zero gradients are warned about by the core."""
    empty = [
        item.labels[t]
        for n, (item, count) in enumerate(zip(items, counts, strict=True))
        for t in range(count)
        if not grid[n, t].any() and bool(record.gradients[n, t].any())
    ]
    if empty:
        shown = ", ".join(repr(label) for label in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        warnings.warn(
            f"the {method} map of {shown} at layer {layer!r} is zero everywhere: no cell raises the "
            "score there (every cell's weighted evidence is <= 0); see the counterfactual map, another "
            "method or another layer",
            stacklevel=3,
        )
