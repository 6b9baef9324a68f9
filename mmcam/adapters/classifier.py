"""Image classifiers: y^c is the pre-softmax logit of class c."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core import GradCAM
from ..core.layers import LayerSpec, resolve_layer
from ..explanation import Explanation
from ..io import ImageLike, InputError, load_image, to_tensor
from ..targets import ClassTarget, TopClassTarget
from ._maps import guided_at_original_size, maps_at_original_size, split_method

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
        guided: bool = True,
        counterfactual: bool = False,
        top: int = 5,
    ) -> list[Explanation]:
        """Explain ``targets`` (labels or indices; default: each image's top prediction) for
        every image, all from one forward pass over the batch."""
        loaded = [load_image(image) for image in images]
        method = method or self.default_method
        base_method, guided_method = split_method(method)
        guided = guided or guided_method
        indices = [self.class_index(target) for target in targets] if targets else None
        target_fns = [ClassTarget(index) for index in indices] if indices else [TopClassTarget(0)]
        with GradCAM(self.model, self.layer, method=base_method) as cam:
            record = cam.gradients(self.preprocess([item.pixels for item in loaded]), target_fns, guided=guided)
            sizes = [item.size for item in loaded]
            heatmaps = maps_at_original_size(cam, record, sizes, method=method)
            counter = maps_at_original_size(cam, record, sizes, method=method, counterfactual=True) if counterfactual else None
        guided_maps = guided_at_original_size(cam, record, sizes, method=method) if guided else None
        logits = record.output if isinstance(record.output, torch.Tensor) else record.output[0]
        probabilities = logits.softmax(dim=1)
        results = []
        for n, item in enumerate(loaded):
            chosen = indices or [int(logits[n].argmax())]
            top_probabilities = probabilities[n].topk(min(top, probabilities.shape[1]))
            predictions = [
                {"label": self.labels[int(i)], "index": int(i), "probability": float(p)}
                for p, i in zip(top_probabilities.values, top_probabilities.indices)
            ]
            results.append(
                Explanation(
                    kind=self.kind,
                    image=item,
                    model=self.name,
                    layer=self.layer_name,
                    method=method,
                    labels=[self.labels[i] for i in chosen],
                    indices=chosen,
                    scores=record.scores[n].numpy(),
                    heatmaps=heatmaps[n],
                    guided=None if guided_maps is None else guided_maps[n],
                    counterfactual=None if counter is None else counter[n],
                    info={"predictions": predictions},
                )
            )
        return results
