"""What the viewer shows, independent of where it came from (JSON records, Parquet, an
:class:`~mmcam.explanation.Explanation`): one :class:`ViewItem` per image, one
:class:`ViewTarget` per explained word or answer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAP_KINDS = ("heatmap", "counterfactual", "contrast", "attention")
"""The maps a target may carry, in the order the page offers them."""


@dataclass
class ViewTarget:
    """One explained word, answer or class.

    ``maps[kind]`` is a 2-D float map in [0, 1] (h, w) for each kind in :data:`MAP_KINDS` that
    exists: at the original image size (records, explanations) or the native grid (Parquet).
    ``guided`` is the Guided Grad-CAM image (H, W, 3) uint8 or None. ``logprob`` is log p of the
    word or answer when known; ``score`` is y^c. ``peak_xy`` and ``bbox`` are in original-image
    pixels. ``extra`` marks a map that belongs to the item rather than to one target (a VQA
    contrast "red vs blue").
    """

    label: str
    score: float | None = None
    logprob: float | None = None
    peak_xy: tuple[int, int] | None = None
    bbox: tuple[int, int, int, int] | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    guided: np.ndarray | None = None
    word_attributions: list[float] | None = None
    extra: bool = False


@dataclass
class ViewItem:
    """One image with its text and explained targets.

    ``pixels`` is the image (H, W, 3) uint8 or None when the file is gone; ``size`` is the
    original (height, width); ``source`` the image's path as found (or as recorded). ``kind`` is "caption", "vqa" or "classify". ``error`` holds a
    failed item's message (then ``targets`` is empty).
    """

    name: str
    kind: str
    size: tuple[int, int] | None
    pixels: np.ndarray | None
    source: str | None = None
    model: str = ""
    layer: str = ""
    method: str = ""
    text: str = ""
    answer: str | None = None
    question_words: list[str] = field(default_factory=list)
    targets: list[ViewTarget] = field(default_factory=list)
    truth: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ViewRun:
    """A run's output: what it is (``meta``: model, method, layer, source...), how many items,
    and the items, read one at a time so that a large run never sits in memory whole."""

    title: str
    meta: dict[str, Any]
    count: int
    items: Iterator[ViewItem]
