"""The shared Grad-CAM engine: hook one layer, one forward pass, batched gradients, maps."""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .gradients import DEFAULT_CHUNK_SIZE, propagate, target_gradients
from .graph import RecordGraph
from .guided import guided_backprop
from .hooks import capture_output, eval_mode, model_lock
from .layout import Layout, infer_layout
from .layers import LayerSpec, resolve_layer
from .maps import normalize as normalize_maps
from .maps import raw_maps
from .maps import upsample as upsample_maps
from .methods import get_method

Inputs = Tensor | Sequence[Any] | Mapping[str, Any]
Target = Callable[[Any], Tensor]
Reshape = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class GradientRecord:
    """Everything one forward pass and its batched backward passes produced (all detached).

    activations: (N, C, h, w) hooked layer output (after the reshape transform);
    gradients: (N, T, C, h, w), d score_t / d activations for each target t;
    scores: (N, T) target scalars y^c; output: the model's output;
    input_gradients: (N, T', C_in, H, W) Guided Backprop gradients w.r.t. the image for the first
    T' <= T targets (``guided_targets``), or None;
    input_size: (H, W) of the image tensor the model saw;
    extra_activations / extra_gradients: outputs (N, ...) of the ``extra_layers`` and their
    gradients (N, T, ...), by layer name (e.g. word embeddings for gradient x input);
    layout: how the layer's output was read as a grid (``"NHWC 7x7"``, ``"tokens 14x14 after 1
    prefix token"``); guided_activations: per activation kind, how many calls the Guided
    Backprop rule was applied to (empty without ``guided``).
    """

    activations: Tensor
    gradients: Tensor
    scores: Tensor
    output: Any
    input_gradients: Tensor | None
    input_size: tuple[int, int]
    extra_activations: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    extra_gradients: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    layout: str = "NCHW"
    guided_activations: dict[str, int] = dataclasses.field(default_factory=dict)
    guided_later: LazyGuided | None = None


class GradCAM:
    """Grad-CAM and its siblings on one layer of any ``nn.Module``.

    >>> cam = GradCAM(model, layer="layer4")
    >>> maps = cam(images, [ClassTarget(281), ClassTarget(285)])   # (N, 2, H, W)

    (``with GradCAM(...) as cam:`` also works; the block holds nothing, since hooks exist only
    while a call runs.)

    The layer is a module, a dotted name or ``None`` (the last convolutional stage). Targets are
    callables mapping the model's output to one scalar per sample, shape (N,). All targets share
    one forward pass; their gradients go to the hooked activations only. The hook exists only
    while a call runs and is removed on every path; modes, ``requires_grad``, ``.grad`` and hooks
    of the model are left as they were. Calls on the same model are serialised by a lock, so
    threads may share a model.

    With ``graph_from_layer`` (the default) the layers before the hooked one run without
    autograd bookkeeping, since no gradient is needed there; Guided Backprop, which needs the
    gradient at the image, records the whole graph. Set it to False when a target or a caller
    needs gradients of earlier tensors (e.g. word embeddings) from the same pass.

    ``forward`` (optional) is called with the inputs instead of ``model`` itself, for models
    whose scores come from a function around the module that holds the layer (a captioner's
    teacher-forced log-probabilities, a VQA model's answer logits). ``extra_layers`` are hooked
    too and get the targets' gradients in the same backward pass (word embeddings of a question,
    for gradient x input attributions).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        method: str = "gradcam",
        reshape: Reshape | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        image_arg: int | str | None = None,
        eval_mode: bool = True,
        graph_from_layer: bool = True,
        forward: Callable[..., Any] | None = None,
        extra_layers: Sequence[LayerSpec] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, layer)
        get_method(method)
        self.method = method
        self.reshape = reshape
        self.chunk_size = chunk_size
        self.image_arg = image_arg
        self.eval_mode = eval_mode
        self.graph_from_layer = graph_from_layer
        self.forward = forward
        self.extra_layers = dict(resolve_layer(model, layer) for layer in extra_layers)

    def __enter__(self) -> GradCAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __call__(self, inputs: Inputs, targets: Sequence[Target], **options: Any) -> Tensor:
        return self.cam(inputs, targets, **options)

    def cam(
        self,
        inputs: Inputs,
        targets: Sequence[Target],
        *,
        upsample: bool = True,
        normalize: bool = True,
        size: tuple[int, int] | None = None,
        counterfactual: bool = False,
        method: str | None = None,
    ) -> Tensor:
        """Maps (N, T, H, W): one per input and target; (N, T, h, w) with ``upsample=False``.

        ``upsample`` resizes bilinearly to ``size`` (default: the image tensor's size),
        ``normalize`` scales each map to [0, 1], ``counterfactual`` negates the gradients.
        """
        record = self.gradients(inputs, targets)
        return self.maps(
            record,
            method=method,
            counterfactual=counterfactual,
            upsample=upsample,
            normalize=normalize,
            size=size,
        )

    def maps(
        self,
        record: GradientRecord,
        *,
        method: str | None = None,
        counterfactual: bool = False,
        upsample: bool = True,
        normalize: bool = True,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Maps (N, T, H, W) of ``method`` from an existing record: other methods cost no pass."""
        maps = raw_maps(record, method or self.method, counterfactual=counterfactual, layer_name=self.layer_name)
        if upsample:
            maps = upsample_maps(maps, size or record.input_size)
        if normalize:
            maps = normalize_maps(maps)
        return maps

    def gradients(
        self,
        inputs: Inputs,
        targets: Sequence[Target],
        *,
        guided: bool | str = False,
        guided_targets: int | None = None,
    ) -> GradientRecord:
        """One forward pass and the batched backward passes of all ``targets``.

        With ``guided=True`` the forward runs under :func:`guided_backprop` and the record also
        holds Guided Backprop's gradients with respect to the image tensor, for the first
        ``guided_targets`` targets (default: all; Guided Backprop is the costly pass); with
        ``guided="lazy"`` the pass is plain and the record's ``guided_later``
        (:class:`LazyGuided`) computes the same gradients when first asked. Raises when no
        gradient can reach the layer (or, guided, the image), naming the cause; warns when a
        target's gradient at the layer is zero everywhere (an all-zero map).
        """
        targets = list(targets)
        if not targets:
            raise ValueError("no targets given; pass at least one target callable")
        if guided not in (True, False, LAZY):
            raise ValueError(f"guided must be True, False or {LAZY!r}, not {guided!r}")
        later, guided = guided == LAZY, guided is True
        columns = len(targets) if guided_targets is None else min(guided_targets, len(targets))  # guided ones
        with ExitStack() as stack:
            stack.enter_context(model_lock(self.model))
            prune = self.graph_from_layer and not guided
            stack.enter_context(torch.no_grad() if prune else torch.enable_grad())
            stack.enter_context(eval_mode(self.model, self.eval_mode))
            image_key, image = _find_image(inputs, self.image_arg)
            if guided:
                image = image.detach().clone().requires_grad_(True)
                inputs = _replace(inputs, image_key, image)
                switch = stack.enter_context(guided_backprop(self.model))
            graph = RecordGraph(active=not prune)
            gates_at_capture: list[int] = []

            def on_capture() -> None:
                graph.activate()
                if guided:
                    gates_at_capture.append(sum(switch.applied.values()))

            captured = stack.enter_context(capture_output(self.layer, on_capture=on_capture))
            extras = {
                name: stack.enter_context(capture_output(module, on_capture=graph.activate))
                for name, module in self.extra_layers.items()
            }
            with graph:  # the targets too: they pick the scores from the output
                output = _call(self.forward or self.model, inputs)
                _check_captured(self.layer_name, captured)
                scores, unreachable = _stack_scores(output, targets, batch=image.shape[0])
            if unreachable:
                raise ValueError(f"target(s) {unreachable}: {graph.cause(self.layer_name)}")
            raw_activation = captured.activation
            if guided:
                switch.guided = False
            missing = [name for name, capture in extras.items() if capture.activation is None]
            if missing:
                raise RuntimeError(f"extra layer(s) {', '.join(missing)} did not run during the forward pass")
            extra_tensors = {name: capture.activation for name, capture in extras.items()}
            activation_gradients, *extra_gradients = target_gradients(
                scores,
                [raw_activation, *extra_tensors.values()],
                chunk_size=self.chunk_size,
                retain_graph=guided,
            )
            if activation_gradients is None:
                raise ValueError(graph.cause(self.layer_name))
            input_gradients = None
            guided_activations: dict[str, int] = {}
            if guided:
                guided_activations = dict(switch.applied)
                input_gradients = self._guided_input_gradients(
                    switch, gates_at_capture, raw_activation, activation_gradients[:, :columns], scores[:, :columns], image, graph
                )
        image_size = (int(image.shape[-2]), int(image.shape[-1]))
        guided_later = None
        if later:
            guided_later = LazyGuided(self, inputs, targets[:columns], activation_gradients[:, :columns].detach())
        activations, gradients, layout = self._to_grid(
            raw_activation.detach(), activation_gradients, image_size, int(image.shape[0])
        )
        _warn_about_flat_gradients(gradients, self.layer_name, _scored_cells(targets, gradients.shape[0]))
        return GradientRecord(
            activations=activations,
            gradients=gradients,
            scores=scores.detach(),
            output=_detach(output),
            input_gradients=input_gradients,
            input_size=image_size,
            extra_activations={name: tensor.detach() for name, tensor in extra_tensors.items()},
            extra_gradients={
                name: torch.zeros(scores.shape[1], *tensor.shape, dtype=tensor.dtype).transpose(0, 1)
                if gradient is None
                else gradient
                for (name, tensor), gradient in zip(extra_tensors.items(), extra_gradients, strict=True)
            },
            layout=layout,
            guided_activations=guided_activations,
            guided_later=guided_later,
        )

    def _guided_input_gradients(
        self,
        switch: Any,
        gates_at_capture: list[int],
        raw_activation: Tensor,
        layer_gradients: Tensor,
        scores: Tensor,
        image: Tensor,
        graph: RecordGraph,
    ) -> Tensor:
        """Guided Backprop gradients (N, T', C, H, W) at ``image`` for the targets whose plain
        gradients at the layer are ``layer_gradients`` (N, T', ...) and scores ``scores`` (N, T'),
        after a forward pass under ``switch`` (its gates counted in ``gates_at_capture`` when the
        layer ran)."""
        if not switch.applied:
            raise RuntimeError(
                "Guided Backprop found no activation function (ReLU, GELU, SiLU, ...) in the "
                "forward pass to apply its rule to; use a method without guided_"
            )
        switch.guided = True
        if gates_at_capture == [sum(switch.applied.values())] and raw_activation.grad_fn is not None:
            # no gate runs after the layer: the guided and plain gradients there are the
            # same, so only the layers before it are traversed again (exact, cheaper)
            (input_gradients,) = propagate(raw_activation, [image], layer_gradients.transpose(0, 1), chunk_size=self.chunk_size)
        else:
            (input_gradients,) = target_gradients(scores, [image], chunk_size=self.chunk_size)
        if input_gradients is None:
            raise RuntimeError(
                "Guided Backprop needs the gradient at the image, but the forward pass cuts the "
                f"graph before layer {self.layer_name!r} ({graph.cause(self.layer_name)}); "
                "use a method without guided_"
            )
        return input_gradients

    def _guided_later(self, inputs: Inputs, targets: Sequence[Target], layer_gradients: Tensor) -> tuple[Tensor, dict[str, int]]:
        """The Guided Backprop pass of :meth:`gradients` run afterwards: a forward pass under
        the guided gates, then the stored plain layer gradients (N, T', ...) propagated to the
        image (or, where a gate follows the layer, the targets' own backward)."""
        with ExitStack() as stack:
            stack.enter_context(model_lock(self.model))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(eval_mode(self.model, self.eval_mode))
            image_key, image = _find_image(inputs, self.image_arg)
            image = image.detach().clone().requires_grad_(True)
            inputs = _replace(inputs, image_key, image)
            switch = stack.enter_context(guided_backprop(self.model))
            graph = RecordGraph(active=True)
            gates_at_capture: list[int] = []
            captured = stack.enter_context(
                capture_output(self.layer, on_capture=lambda: gates_at_capture.append(sum(switch.applied.values())))
            )
            with graph:
                output = _call(self.forward or self.model, inputs)
                _check_captured(self.layer_name, captured)
                scores, _ = _stack_scores(output, targets, batch=image.shape[0])
            switch.guided = False
            gradients = self._guided_input_gradients(
                switch, gates_at_capture, captured.activation, layer_gradients.to(image.device), scores, image, graph
            )
            return gradients.detach(), dict(switch.applied)

    def _to_grid(
        self, activations: Tensor, gradients: Tensor, image_size: tuple[int, int], batch: int
    ) -> tuple[Tensor, Tensor, str]:
        """Activations (N, C, h, w) and gradients (N, T, C, h, w) from the layer's own layout
        (gradients as ``target_gradients`` gives them: (A0, T, A1, ...) for activations A), read
        by ``reshape`` or inferred by :func:`infer_layout`; and the layout in words."""
        reshape = self.reshape
        if reshape is None:
            prefix = getattr(self.model, "num_prefix_tokens", None)
            reshape = infer_layout(
                tuple(activations.shape),
                batch,
                image_size,
                layer_name=self.layer_name,
                prefix_tokens=prefix if isinstance(prefix, int) else None,
            )
        if isinstance(reshape, Layout) or callable(getattr(reshape, "gradients", None)):
            # a layout object: reshape(activations) -> (N, C, h, w) and
            # reshape.gradients((T, *activations.shape)) -> (N, T, C, h, w), for layouts without a
            # leading batch dimension (a VLM's vision tokens of all images in one sequence)
            described = reshape.describe() if callable(getattr(reshape, "describe", None)) else "custom layout"
            grid, grid_gradients = reshape(activations), reshape.gradients(gradients.transpose(0, 1))
        else:
            count, targets_count = gradients.shape[:2]
            grid = reshape(activations)
            flat = reshape(gradients.reshape(count * targets_count, *gradients.shape[2:]))
            grid_gradients, described = flat.reshape(count, targets_count, *flat.shape[1:]), "custom reshape"
        if grid.dim() != 4:
            raise ValueError(
                f"layer {self.layer_name!r} gives activations of shape {tuple(grid.shape)} after the "
                "reshape; a (N, C, h, w) grid is needed: pass reshape=TokenGrid(...) for token layouts"
            )
        return grid, grid_gradients, described


LAZY = "lazy"


class LazyGuided:
    """Guided Backprop gradients at the image for a record made with ``guided="lazy"``:
    computed once, on the first :meth:`compute`, by a second forward pass under the guided gates
    and the record's own plain gradients at the layer propagated back (the same numbers the
    eager pass gives). The model must be as it was: a changed weight or buffer is refused."""

    def __init__(self, cam: GradCAM, inputs: Inputs, targets: Sequence[Target], layer_gradients: Tensor) -> None:
        self._cam, self._inputs, self._targets = cam, _detached(inputs), list(targets)
        self._layer_gradients = layer_gradients
        self._fingerprint = _fingerprint(cam.model)
        self._lock = threading.Lock()
        self._result: tuple[Tensor, dict[str, int]] | None = None

    def compute(self) -> tuple[Tensor, dict[str, int]]:
        """(N, T', C, H, W) Guided Backprop gradients (on the CPU) and the guided activation counts."""
        with self._lock:
            if self._result is None:
                if _fingerprint(self._cam.model) != self._fingerprint:
                    raise RuntimeError(
                        "the model's weights changed after it was explained; Guided Backprop is computed "
                        "on first use from the same model: explain again, or pass guided=True to compute it at once"
                    )
                gradients, applied = self._cam._guided_later(self._inputs, self._targets, self._layer_gradients)
                self._result = gradients.cpu().float(), applied
                self._inputs = self._layer_gradients = None  # type: ignore[assignment]
            return self._result


def _fingerprint(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Which tensors the model holds and their in-place version counters."""
    return tuple((id(tensor), tensor._version) for tensor in [*model.parameters(), *model.buffers()])


def _detached(inputs: Inputs) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs.detach()
    if isinstance(inputs, Mapping):
        return {key: value.detach() if isinstance(value, Tensor) else value for key, value in inputs.items()}
    return tuple(value.detach() if isinstance(value, Tensor) else value for value in inputs)


def _check_captured(layer_name: str, captured) -> None:
    if captured.activation is None:
        raise RuntimeError(
            f"layer {layer_name!r} did not run during the forward pass; "
            "choose a layer on the path from the image to the output"
        )
    if captured.calls > 1:
        raise RuntimeError(
            f"layer {layer_name!r} ran {captured.calls} times in one forward pass (a shared or "
            "recurrent module); its maps would mix those calls: hook a layer that runs once"
        )


def _scored_cells(targets: Sequence[Target], batch: int) -> Tensor:
    """(N, T): whether target t scores sample n. A target that scores only some samples (a
    column of a minibatch of captions of different lengths) names them in ``scored``."""
    return torch.tensor([list(getattr(target, "scored", (True,) * batch)) for target in targets], dtype=torch.bool).T


def _warn_about_flat_gradients(gradients: Tensor, layer_name: str, scored: Tensor) -> None:
    """An all-zero map because the score does not depend on the layer's cells is said so
    (cells of ``scored`` (N, T) only: a sample a target does not score has a zero map by design)."""
    flat = (gradients == 0).flatten(2).all(dim=2) & scored.to(gradients.device)  # (N, T)
    if flat.any():
        targets = sorted({int(t) for t in flat.nonzero()[:, 1]})
        warnings.warn(
            f"the gradient of target(s) {targets} at layer {layer_name!r} is zero everywhere: their "
            "scores do not depend on the layer's cells here and their maps are all zero (the last "
            "block of a class-token-pooled ViT is such a layer: hook an earlier block)",
            stacklevel=3,
        )


def guided_gradcam(
    model: nn.Module,
    inputs: Inputs,
    targets: Sequence[Target],
    layer: LayerSpec = None,
    **options: Any,
) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al., sec. 3.1): Guided Backprop (N, T, C, H, W) times the
    upsampled Grad-CAM map (N, T, 1, H, W), from one forward pass. ``options`` go to
    :class:`GradCAM` (``method``, ``reshape``, ``image_arg``, ...)."""
    with GradCAM(model, layer, **options) as cam:
        record = cam.gradients(inputs, targets, guided=True)
        maps = cam.maps(record)
    assert record.input_gradients is not None
    return record.input_gradients * maps.unsqueeze(2)


def _call(model: Callable[..., Any], inputs: Inputs) -> Any:
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return model(*inputs)
    raise TypeError(
        f"inputs must be a tensor, a tuple/list of positional arguments or a dict of keyword "
        f"arguments, not {type(inputs).__name__}"
    )


def _find_image(inputs: Inputs, image_arg: int | str | None) -> tuple[int | str | None, Tensor]:
    """The image tensor among the model's inputs: the tensor itself, ``image_arg``, the
    ``pixel_values`` keyword, or the first floating-point tensor with 4 dimensions."""
    if isinstance(inputs, Tensor):
        return None, inputs
    if image_arg is not None:
        return image_arg, inputs[image_arg]  # type: ignore[index]
    items = inputs.items() if isinstance(inputs, Mapping) else enumerate(inputs)
    candidates = [(key, value) for key, value in items if _is_image(value)]
    if isinstance(inputs, Mapping) and _is_image(inputs.get("pixel_values")):
        return "pixel_values", inputs["pixel_values"]
    if not candidates:
        raise ValueError("no image tensor (floating point, (N, C, H, W)) found among the inputs")
    return candidates[0]


def _is_image(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.dim() == 4


def _replace(inputs: Inputs, key: int | str | None, value: Tensor) -> Inputs:
    if key is None:
        return value
    if isinstance(inputs, Mapping):
        return {**inputs, key: value}
    replaced = list(inputs)
    replaced[key] = value  # type: ignore[index]
    return tuple(replaced)


def _stack_scores(output: Any, targets: Sequence[Target], batch: int) -> tuple[Tensor, list[int]]:
    """(N, T) scores, one column per target, each checked to be one scalar per sample; and the
    targets whose score has no autograd path at all (their maps would be silently zero)."""
    columns = []
    for index, target in enumerate(targets):
        score = target(output)
        if not isinstance(score, Tensor):
            raise TypeError(f"target {index} returned {type(score).__name__}, not a tensor")
        if score.dim() == 0 and batch == 1:
            score = score.reshape(1)
        if score.shape != (batch,):
            raise ValueError(
                f"target {index} returned shape {tuple(score.shape)}; a target must return one "
                f"scalar per sample, shape ({batch},)"
            )
        if not torch.isfinite(score).all():
            raise ValueError(f"target {index} gave a non-finite score: {score.tolist()}")
        columns.append(score)
    return torch.stack(columns, dim=1), [index for index, score in enumerate(columns) if not score.requires_grad]


def _detach(output: Any) -> Any:
    return map_tensors(output, Tensor.detach)


def map_tensors(value: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with ``function`` applied to every tensor in it: a tensor, or one inside
    dataclasses (a :class:`GradientRecord`, a model output), dicts, tuples and lists."""
    if isinstance(value, Tensor):
        return function(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: map_tensors(getattr(value, field.name), function) for field in dataclasses.fields(value) if field.init}
        return dataclasses.replace(value, **fields)
    if isinstance(value, dict):
        return {key: map_tensors(item, function) for key, item in value.items()}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(map_tensors(item, function) for item in value)
    if isinstance(value, list):
        return [map_tensors(item, function) for item in value]
    return value
