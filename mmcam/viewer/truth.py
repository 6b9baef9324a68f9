"""Ground-truth boxes for a run's images (``mmcam view OUT --boxes FILE``) and pointing: does a
target's peak fall inside a box of the same label?"""

from __future__ import annotations

import os
from pathlib import Path

from ..eval.localization import Box, read_boxes
from .items import ViewItem


class GroundTruth:
    """Boxes by image, read from a boxes file (``mmcam.eval.localization`` format: JSON lines
    ``{"image", "label", "box"}`` or CSV); images match by full path, else by file name."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._by_path: dict[str, dict[str, list[Box]]] = {}
        self._by_name: dict[str, dict[str, list[Box]]] = {}
        for boxed in read_boxes(path):
            boxes = {label.lower(): list(found) for label, found in boxed.boxes.items()}
            self._by_path[_key(boxed.image)] = boxes
            self._by_name.setdefault(Path(boxed.image).name, boxes)

    def attach(self, item: ViewItem) -> None:
        """Set ``item.truth`` (label -> boxes) for the item's image, when the file has it."""
        if not item.source:
            return
        found = self._by_path.get(_key(item.source)) or self._by_name.get(Path(item.source).name)
        item.truth = dict(found) if found else {}


def _key(path: str) -> str:
    return str(Path(path).resolve())


def pointing_hit(peak_xy: tuple[int, int] | None, boxes: list[Box]) -> bool | None:
    """Whether ``peak_xy`` lies in one of ``boxes`` (inclusive pixels); None without boxes.
    An all-zero map (no peak) misses."""
    if not boxes:
        return None
    if peak_xy is None:
        return False
    x, y = peak_xy
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in boxes)
