"""Image classifiers: y^c is the pre-softmax logit of class c."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.layers import LayerSpec, resolve_layer
from ..explanation import Explanation
from ..io import ImageLike, InputError, load_image, to_tensor
from ..pipeline import DEFAULT_COUNTERFACTUAL, DEFAULT_GUIDED, ItemLabels, ModelPass, explanations, run_pass
from ..targets import ClassTarget, TopClassTarget

ClassRef = int | str


@dataclass
class ClassifierAdapter:
    """A classifier with its preprocessing (resize without crop, mean/std), class names and
    layer. ``explain`` and ``explain_batch`` return one :class:`Explanation` per image."""

    model: nn.Module
    name: str
    labels: Sequence[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int] = (224, 224)
    layer: LayerSpec = None
    default_method: str = "gradcam"
    kind: str = "classify"

    def __post_init__(self) -> None:
        self.layer_name = resolve_layer(self.model, self.layer)[0]

    def class_index(self, target: ClassRef) -> int:
        """The index of a class given by index or by label (case-insensitive)."""
        count = len(self.labels)
        if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.strip().isdigit()):
            index = int(target)
            if not 0 <= index < count:
                raise InputError(f"class index {index} out of range; this model has {count} classes (0-{count - 1})")
            return index
        wanted = str(target).strip().lower()
        lowered = [label.lower() for label in self.labels]
        if wanted in lowered:
            return lowered.index(wanted)
        close = difflib.get_close_matches(wanted, lowered, n=5, cutoff=0.5)
        partial = [label for label in lowered if wanted and wanted in label][:5]
        suggestions = ", ".join(repr(self.labels[lowered.index(c)]) for c in dict.fromkeys(close + partial))
        raise InputError(f"unknown label {target!r}; closest labels: {suggestions or 'none'}")

    def preprocess(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images -> a normalised batch (N, 3, h, w)."""
        batch = torch.stack([to_tensor(image, self.input_size) for image in pixels])
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return (batch - mean) / std

    def explain(self, image: ImageLike, targets: Sequence[ClassRef] | None = None, **options) -> Explanation:
        """Explain one image; see :meth:`explain_batch`."""
        return self.explain_batch([image], targets, **options)[0]

    def explain_batch(
        self,
        images: Sequence[ImageLike],
        targets: Sequence[ClassRef] | None = None,
        *,
        method: str | None = None,
        guided: bool | str = DEFAULT_GUIDED,
        counterfactual: bool = DEFAULT_COUNTERFACTUAL,
        top: int = 5,
    ) -> list[Explanation]:
        """Explain ``targets`` (labels or indices; default: each image's top prediction) for
        every image, all from one forward pass over the batch. ``guided``: Guided Backprop on
        first use (``"lazy"``, default), in the same pass (True) or not at all (False)."""
        loaded = [load_image(image) for image in images]
        method = method or self.default_method
        indices = [self.class_index(target) for target in targets] if targets else None
        target_fns = [ClassTarget(index) for index in indices] if indices else [TopClassTarget(0)]
        pixels = self.preprocess([item.pixels for item in loaded])
        cam, record = run_pass(ModelPass(self.model, self.layer), pixels, target_fns, method=method, guided=guided)
        logits = record.output if isinstance(record.output, torch.Tensor) else record.output[0]
        probabilities = logits.softmax(dim=1)
        items = []
        for n, item in enumerate(loaded):
            chosen = indices or [int(logits[n].argmax())]
            top_probabilities = probabilities[n].topk(min(top, probabilities.shape[1]))
            predictions = [
                {"label": self.labels[int(i)], "index": int(i), "probability": float(p)}
                for p, i in zip(top_probabilities.values, top_probabilities.indices)
            ]
            items.append(ItemLabels(item, [self.labels[i] for i in chosen], chosen, {"predictions": predictions}))
        return explanations(
            self.kind, self.name, cam, record, items, method=method, explained=len(target_fns), counterfactual=counterfactual
        )
