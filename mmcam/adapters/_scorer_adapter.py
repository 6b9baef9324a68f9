"""What the captioning and VQA adapters share: a scorer, a default method, an early layer check."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ..core.layers import resolve_layer
from ..core.maps import split_method

Options = TypeVar("Options")


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


def checked_options(options_class: type[Options], options: dict[str, Any], what: str) -> Options:
    """``options_class(**options)`` (a dataclass of keyword options with a ``method`` field),
    checked before any work: an unknown keyword names the accepted ones, an unknown method fails."""
    names = [item.name for item in fields(options_class)]  # type: ignore[arg-type]
    unknown = set(options) - set(names)
    if unknown:
        raise TypeError(f"unknown {what} option(s) {', '.join(sorted(unknown))}; accepted: {', '.join(names)}")
    settings = options_class(**options)
    if getattr(settings, "method", None) is not None:
        split_method(settings.method)  # type: ignore[attr-defined]
    return settings
