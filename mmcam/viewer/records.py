"""Reading a JSON-record output (``mmcam caption|vqa --batch ... --out OUT``): one ``STEM.json``
per item beside its ``.npy`` maps, Guided Grad-CAM PNGs, counterfactual, contrastive and
attention maps (README, "--out DIR")."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..explanation import _slug
from ..io import InputError
from .files import display_path, find_file, find_image, read_map, read_pixels
from .items import ViewItem, ViewRun, ViewTarget

_CONTRAST = "_contrast_"
_WORD_POSITION = re.compile(r"^(\d+)-")  # a caption's contrast names its word's position first


def read_records(folder: Path) -> ViewRun:
    """The items of a record output, in natural order of their stems (scene2 before scene10)."""
    records = []
    for path in sorted(folder.glob("*.json"), key=lambda path: _natural_key(path.stem)):
        record = _load_record(path)
        if record is not None:
            records.append((path.stem, record))
    if not records:
        raise InputError(f"no mmcam records in {folder}: expected STEM.json files from 'mmcam caption|vqa --batch ... --out' or a Parquet manifest.json")
    first = records[0][1]
    meta = {"source": display_path(folder), "format": "records", **{key: first.get(key) for key in ("model", "method", "layer")}}
    contrasts = _contrast_files(folder, {stem for stem, _ in records})
    items = (_item(folder, stem, record, contrasts.get(stem, [])) for stem, record in records)
    return ViewRun(display_path(folder), meta, len(records), items)


def _contrast_files(folder: Path, stems: set[str]) -> dict[str, list[tuple[str, Path]]]:
    """``STEM_contrast_LABEL.npy`` files by stem, as (label, path) pairs: one listing of the
    folder for the whole run."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(folder.glob("*_contrast_*.npy")):
        name = path.name[: -len(".npy")]
        start = name.find(_CONTRAST)
        while start >= 0:
            if name[:start] in stems:
                found.setdefault(name[:start], []).append((name[start + len(_CONTRAST) :], path))
                break
            start = name.find(_CONTRAST, start + 1)
    return found


def _load_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(record, dict) and "image" in record and ("words" in record or "explanations" in record or "error" in record):
        return record
    return None


def _natural_key(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _item(folder: Path, stem: str, record: dict[str, Any], contrasts: list[tuple[str, Path]]) -> ViewItem:
    notes: list[str] = []
    kind = "caption" if "words" in record else "vqa"
    image = find_image(record.get("image"), folder, [folder.parent])
    pixels = read_pixels(image, notes, record.get("image")) if "error" not in record else None
    item = ViewItem(
        name=stem,
        kind=kind,
        size=pixels.shape[:2] if pixels is not None else None,
        pixels=pixels,
        source=str(image) if image else record.get("image"),
        model=str(record.get("model", "")),
        layer=str(record.get("layer", "")),
        method=str(record.get("method", "")),
        text=str(record.get("caption") if kind == "caption" else record.get("question", "")),
        answer=record.get("answer"),
        notes=notes,
        error=record.get("error"),
    )
    if item.error:
        return item
    entries = record["words"] if kind == "caption" else record["explanations"]
    item.targets = [_target(folder, stem, t, entry, record, kind) for t, entry in enumerate(entries)]
    if kind == "vqa":
        words = record.get("question_words") or []
        item.question_words = [str(word["word"]) for word in words]
        if item.targets and words and all(word.get("attribution") is not None for word in words):
            item.targets[0].word_attributions = [float(word["attribution"]) for word in words]
    _attach_contrasts(item, record, contrasts)
    if item.size is None:
        shapes = [heatmap.shape for target in item.targets for heatmap in target.maps.values()]
        item.size = shapes[0] if shapes else None
    return item


def _target(folder: Path, stem: str, t: int, entry: dict[str, Any], record: dict[str, Any], kind: str) -> ViewTarget:
    label = str(entry["word"] if kind == "caption" else entry["answer"])
    heatmap = find_file(entry.get("heatmap"), folder) or find_file(f"{stem}_{t:02d}_{_slug(label)}.npy", folder)
    base = str(heatmap)[: -len(".npy")] if heatmap else str(folder / f"{stem}_{t:02d}_{_slug(label)}")
    maps = {"heatmap": read_map(heatmap)}
    for kind_name in ("counterfactual", "attention"):
        maps[kind_name] = read_map(_existing(Path(f"{base}_{kind_name}.npy")))
    guided = _existing(Path(f"{base}_guided.png"))
    if kind == "caption":
        logprob = entry.get("logprob")
    else:
        probability = {top["answer"]: top["probability"] for top in record.get("top", [])}.get(label)
        logprob = math.log(probability) if probability else None
    return ViewTarget(
        label=label,
        score=entry.get("score"),
        logprob=None if logprob is None else float(logprob),
        peak_xy=tuple(entry["peak_xy"]) if entry.get("peak_xy") else None,
        bbox=tuple(entry["bbox"]) if entry.get("bbox") else None,
        maps={name: value for name, value in maps.items() if value is not None},
        guided=_read_rgb(guided),
    )


def _read_rgb(path: Path | None) -> np.ndarray | None:
    """A Guided Grad-CAM PNG as RGB uint8 (H, W, 3); None when missing or unreadable."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError):
        return None


def _attach_contrasts(item: ViewItem, record: dict[str, Any], contrasts: list[tuple[str, Path]]) -> None:
    """A caption's ``STEM_contrast_NN-word-vs-runner-up.npy`` (the name may be cut short)
    belongs to the word at position NN; a VQA contrast (``STEM_contrast_red-vs-blue.npy``)
    becomes an extra target of the item."""
    positions = {entry.get("index"): t for t, entry in enumerate(record.get("words", []))}
    for label, path in contrasts:
        heatmap = read_map(path)
        if heatmap is None:
            continue
        position = _WORD_POSITION.match(label) if item.kind == "caption" else None
        if position and int(position.group(1)) in positions:
            item.targets[positions[int(position.group(1))]].maps["contrast"] = heatmap
        else:
            item.targets.append(ViewTarget(label=label.replace("-vs-", " vs "), maps={"heatmap": heatmap}, extra=True))


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None
