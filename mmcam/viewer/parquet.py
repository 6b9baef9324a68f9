"""Reading a Parquet output (``--format parquet``, issue 13): ``OUT/manifest.json`` and
``OUT/parts/*.parquet`` with one row per item and target; ``map`` holds the native-grid map
(``grid_h`` x ``grid_w``, row-major), the page upsamples it. A row with ``error`` set is a
failed item."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..io import InputError
from .files import display_path, find_image, read_pixels
from .items import MAP_KINDS, ViewItem, ViewRun, ViewTarget

MANIFEST = "manifest.json"


def is_parquet_output(folder: Path) -> bool:
    """Whether ``folder`` holds a Parquet manifest."""
    return (folder / MANIFEST).is_file()


def read_parquet(folder: Path) -> ViewRun:
    """The items of a Parquet output, ordered by ``item``; targets by ``target_index``."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading a Parquet output needs pyarrow: pip install pyarrow") from None
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{folder / MANIFEST} is not a JSON manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{folder / MANIFEST} is not a JSON object")
    rows_by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for part in _parts(folder, manifest):
        try:
            table = pq.read_table(part)
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise InputError(f"cannot read Parquet part {part}: {error}") from None
        for row in table.to_pylist():
            if row.get("item") is not None:
                rows_by_item[int(row["item"])].append(row)
    if not rows_by_item:
        raise InputError(f"no rows in the Parquet parts of {folder}")
    bases = [Path(str(manifest[key])).parent for key in ("input", "items", "batch") if isinstance(manifest.get(key), str)]
    meta = {"source": display_path(folder), "format": "parquet", **{key: manifest.get(key) for key in ("model", "method", "layer")}}
    order = sorted(rows_by_item)
    items = (_item(folder, bases, index, rows_by_item[index]) for index in order)
    return ViewRun(display_path(folder), meta, len(order), items)


def _parts(folder: Path, manifest: dict[str, Any]) -> list[Path]:
    listed = manifest.get("parts")
    if isinstance(listed, list) and listed:
        names = [part if isinstance(part, str) else part.get("path") or part.get("file") for part in listed if isinstance(part, (str, dict))]
        paths = [_part_path(folder, str(name)) for name in names if name]
    else:
        paths = sorted((folder / "parts").glob("*.parquet"))
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise InputError(f"Parquet part(s) listed in {folder / MANIFEST} are missing: {', '.join(missing[:3])}")
    if not paths:
        raise InputError(f"no Parquet parts in {folder / 'parts'}")
    return paths


def _part_path(folder: Path, name: str) -> Path:
    path = Path(name)
    if path.is_absolute():
        return path
    return folder / path if (folder / path).is_file() or path.parent != Path(".") else folder / "parts" / path


def _item(folder: Path, bases: list[Path], index: int, rows: list[dict[str, Any]]) -> ViewItem:
    first = rows[0]
    notes: list[str] = []
    errors = [row["error"] for row in rows if row.get("error")]
    answer = first.get("answer")
    image = first.get("image")
    found = find_image(image, folder, [*bases, folder.parent])
    pixels = None if errors else read_pixels(found, notes, image)
    item = ViewItem(
        name=f"{index}",
        kind="vqa" if answer is not None else "caption",
        size=pixels.shape[:2] if pixels is not None else None,
        pixels=pixels,
        source=str(found) if found else image,
        model=str(first.get("model") or ""),
        layer=str(first.get("layer") or ""),
        method=str(first.get("method") or ""),
        text=str(first.get("text") or ""),
        answer=answer,
        notes=notes,
        error=errors[0] if errors else None,
    )
    if image:
        item.name = f"{index}: {Path(str(image)).name}"
    if item.error:
        return item
    rows = sorted(rows, key=lambda row: row.get("target_index") or 0)
    item.targets = [_target(row, item.kind) for row in rows]
    if item.size is None and rows:
        item.size = (int(rows[0]["grid_h"]) * 16, int(rows[0]["grid_w"]) * 16)  # the grid's shape, drawn large
    return item


def _target(row: dict[str, Any], kind: str) -> ViewTarget:
    shape = (int(row["grid_h"]), int(row["grid_w"]))
    maps = {name: _grid_map(row.get(column), shape) for name, column in zip(MAP_KINDS, ("map", *MAP_KINDS[1:]), strict=True)}
    if kind == "caption":
        logprob = row.get("logprob", row.get("score"))
    else:
        probability = row.get("probability")
        logprob = row.get("logprob", math.log(probability) if probability else None)
    peak = (row.get("peak_x"), row.get("peak_y"))
    return ViewTarget(
        label=str(row.get("target")),
        score=row.get("score"),
        logprob=None if logprob is None else float(logprob),
        peak_xy=(int(peak[0]), int(peak[1])) if None not in peak else None,
        bbox=tuple(int(value) for value in row["bbox"]) if row.get("bbox") else None,
        maps={name: value for name, value in maps.items() if value is not None},
    )


def _grid_map(values: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A row-major native-grid map scaled to [0, 1] by its maximum, like mmcam's maps."""
    if values is None:
        return None
    grid = np.asarray(values, dtype=np.float32)
    if grid.size != shape[0] * shape[1]:
        return None
    grid = grid.reshape(shape)
    peak = float(grid.max(initial=0.0))
    return np.clip(grid / peak, 0.0, 1.0) if peak > 0 else np.zeros(shape, np.float32)
