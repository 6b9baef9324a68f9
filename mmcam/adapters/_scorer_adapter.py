"""What the captioning and VQA adapters share: a scorer, a default method, an early layer check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.layers import resolve_layer


@dataclass
class ScorerAdapter:
    """An adapter around a scorer object that names its ``model``, ``layer`` and ``name``."""

    scorer: Any
    default_method: str = "gradcam"

    def __post_init__(self) -> None:
        # a wrong layer name fails here, once, not again for every item of a batch
        resolve_layer(self.scorer.model, self.scorer.layer)

    @property
    def name(self) -> str:
        return self.scorer.name
