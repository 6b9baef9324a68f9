"""The paper's weakly-supervised localization (sec. 4.1): box = bounding box of the largest
segment of the map above 15% of its maximum; a localization is correct when the class is right
and the box overlaps a ground-truth box of that class with IoU >= 0.5.

Dataset file (JSON lines or CSV with a header), one ground-truth box per row; image paths are
relative to the file's folder; ``label`` is a class name or index; boxes are inclusive pixel
coordinates of the original image (x right, y down)::

    {"image": "cat.jpg", "label": "tabby", "box": [40, 0, 420, 299]}
    image,label,x0,y0,x1,y1
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from tqdm.auto import tqdm

from ..core.localize import localization_box
from ..core.methods import METHODS
from ..data.scenes import Scene
from ..errors import InputError

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class BoxedImage:
    """An image path with its ground-truth boxes by class label."""

    image: str
    boxes: dict[str, list[Box]]


def iou(first: Box, second: Box) -> float:
    """Intersection over union of two inclusive pixel boxes."""
    width = min(first[2], second[2]) - max(first[0], second[0]) + 1
    height = min(first[3], second[3]) - max(first[1], second[1]) + 1
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height

    def area(box: Box) -> int:
        return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)

    return intersection / (area(first) + area(second) - intersection)


def read_boxes(path: str | Path) -> list[BoxedImage]:
    """Read a dataset file (JSON lines or CSV, see the module docstring)."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"boxes file not found: {path}")
    rows: list[tuple[str, str, Box]] = []
    text = source.read_text(encoding="utf-8")
    if source.suffix.lower() == ".csv":
        for number, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            try:
                rows.append((row["image"], row["label"], tuple(int(float(row[k])) for k in ("x0", "y0", "x1", "y1"))))
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{path}:{number}: expected columns image,label,x0,y0,x1,y1") from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                box = tuple(int(value) for value in record["box"])
                if len(box) != 4:
                    raise ValueError
                rows.append((record["image"], str(record["label"]), box))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise InputError(f'{path}:{number}: expected {{"image", "label", "box": [x0, y0, x1, y1]}}') from None
    grouped: dict[str, dict[str, list[Box]]] = defaultdict(lambda: defaultdict(list))
    for image, label, box in rows:
        grouped[str(source.parent / image)][label].append(box)  # type: ignore[arg-type]
    return [BoxedImage(image, dict(boxes)) for image, boxes in grouped.items()]


def classifier_localization(adapter, dataset: Sequence[BoxedImage], *, methods: Sequence[str] = ("gradcam",), top: int = 5, batch_size: int = 8, show_progress: bool = False) -> dict[str, dict[str, float]]:
    """Top-1 and top-``top`` localization and classification errors per method; the maps of the
    ``top`` best classes come from one pass per batch. An image with several labels counts once
    per label."""
    from ..core.maps import maps_at_original_size
    from ..core import GradCAM
    from ..io import load_image
    from ..targets import TopClassTarget

    counts: dict[str, dict[str, float]] = {method: defaultdict(float) for method in methods}
    total = 0
    batches = [dataset[i : i + batch_size] for i in range(0, len(dataset), batch_size)]
    for batch in tqdm(batches, desc="localization", disable=not show_progress):
        loaded = [load_image(item.image) for item in batch]
        with GradCAM(adapter.model, adapter.layer) as cam:
            record = cam.gradients(adapter.preprocess([image.pixels for image in loaded]), [TopClassTarget(k) for k in range(top)])
        ranked = record.output.topk(top, dim=1).indices.tolist()
        for method in methods:
            maps = maps_at_original_size(record, [image.size for image in loaded], method=method)
            for n, item in enumerate(batch):
                for label, boxes in item.boxes.items():
                    truth = adapter.class_index(label)
                    located = [
                        ranked[n][k] == truth and any(iou(localization_box(maps[n][k]) or (0, 0, 0, 0), box) >= 0.5 for box in boxes)
                        for k in range(top)
                    ]
                    counts[method]["top1_loc_error"] += not located[0]
                    counts[method][f"top{top}_loc_error"] += not any(located)
                    counts[method]["top1_cls_error"] += ranked[n][0] != truth
                    counts[method][f"top{top}_cls_error"] += truth not in ranked[n]
                    if method == methods[0]:
                        total += 1
    return {method: {key: value / max(total, 1) for key, value in scores.items()} | {"n": total} for method, scores in counts.items()}


def scene_localization(adapter, scenes: Sequence[Scene], *, methods: Sequence[str] = tuple(METHODS), show_progress: bool = False) -> dict[str, dict[str, float]]:
    """For every colour/shape word of the generated scenes' captions: is the paper's box of the
    word's map within IoU >= 0.5 of the named object's box? (The 'class' is given: the caption
    is teacher-forced.) Per method: ``loc_accuracy``, ``mean_iou`` and by word kind."""
    from ..data.scenes import word_kind
    from .grounding import scene_word_maps

    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for scene in tqdm(scenes, desc="localization", disable=not show_progress):
        positions, maps = scene_word_maps(adapter, scene, methods)
        for name, stack in maps.items():
            for t, position in enumerate(positions):
                truth = scene.objects[scene.word_objects[position]].box
                overlap = iou(localization_box(stack[t]) or (0, 0, 0, 0), truth) if stack[t].max() > 0 else 0.0
                kind = word_kind(scene.words[position])
                for suffix in ("", f"_{kind}"):
                    values[name][f"loc_accuracy{suffix}"].append(float(overlap >= 0.5))
                    values[name][f"mean_iou{suffix}"].append(overlap)
    return {name: {metric: sum(items) / len(items) for metric, items in metrics.items()} for name, metrics in values.items()}
