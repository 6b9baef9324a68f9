"""Packing a :class:`ViewItem` for the page: maps quantised to uint8 and tiled into one
grayscale PNG per item, images as JPEG or PNG (whichever is smaller), all as data URLs, plus
the summary the dataset page sorts and filters by."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .items import MAP_KINDS, ViewItem, ViewTarget
from .truth import pointing_hit


@dataclass(frozen=True)
class PackOptions:
    """Sizes in pixels of the longest side: maps (tiles), the full image, thumbnails."""

    map_side: int = 128
    image_side: int = 1024
    thumb_side: int = 112
    jpeg_quality: int = 90


@dataclass(frozen=True)
class PackedItem:
    """``entry``: the dataset page's summary (thumbnail, sort keys); ``payload``: everything
    the item page draws, decoded only when the item is shown."""

    entry: dict[str, Any]
    payload: dict[str, Any]


def pack_item(item: ViewItem, options: PackOptions = PackOptions(), *, thumbnail: bool = True) -> PackedItem:
    """Pack ``item``; ``thumbnail=False`` leaves the thumbnail out (a single-item view)."""
    height, width = item.size or (1, 1)
    hits = [pointing_hit(target.peak_xy, item.truth.get(target.label.lower(), [])) for target in item.targets]
    tiles, targets = _tiles_and_targets(item, options, hits)
    payload: dict[str, Any] = {
        "name": item.name,
        "kind": item.kind,
        "model": item.model,
        "layer": item.layer,
        "method": item.method,
        "source": item.source,
        "text": item.text,
        "answer": item.answer,
        "question": item.question_words,
        "notes": item.notes,
        "error": item.error,
        "width": int(width),
        "height": int(height),
        "image": encode_image(item.pixels, options.image_side, options.jpeg_quality) if item.pixels is not None else None,
        "targets": targets,
        **_sheet(tiles),
    }
    return PackedItem(_entry(item, hits, options, thumbnail), payload)


def encode_image(pixels: np.ndarray, max_side: int, quality: int = 90) -> str:
    """RGB uint8 (H, W, 3), shrunk to ``max_side`` at most, as a PNG or JPEG data URL
    (the smaller)."""
    image = Image.fromarray(pixels)
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    encoded = []
    for kind, keywords in (("png", {}), ("jpeg", {"quality": quality})):
        buffer = io.BytesIO()
        image.save(buffer, format=kind.upper(), **keywords)
        encoded.append((len(buffer.getvalue()), kind, buffer.getvalue()))
    _, kind, data = min(encoded)
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def quantise(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A [0, 1] map (h, w) area-averaged to ``shape`` (when it differs) and quantised to
    uint8 ``round(255 * value)``."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != tuple(shape):
        resized = Image.fromarray(heatmap, mode="F").resize((shape[1], shape[0]), Image.BOX)
        heatmap = np.asarray(resized, dtype=np.float32)
    return np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def tile_shape(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(h, w) of a map's tile: the map's shape, shrunk so its longest side is ``max_side``."""
    scale = min(1.0, max_side / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def peak_strength(heatmap: np.ndarray) -> float:
    """1 - mean / max of a map: 0 for a flat or all-zero map, near 1 for one bright spot."""
    peak = float(np.max(heatmap, initial=0.0))
    return 0.0 if peak <= 0 else 1.0 - float(np.mean(heatmap)) / peak


def unpack_map(payload: dict[str, Any], target: int, kind: str = "heatmap") -> np.ndarray | None:
    """The uint8 tile (h, w) of ``target``'s ``kind`` map from a payload: the inverse of the
    packing, as the page decodes it."""
    row = payload["targets"][target]["maps"].get(kind)
    if row is None:
        return None
    data = base64.b64decode(payload["sheet"].split(",", 1)[1])
    sheet = np.asarray(Image.open(io.BytesIO(data)))
    height, width, rows = payload["tileHeight"], payload["tileWidth"], payload["tileRows"]
    top, left = (row % rows) * height, (row // rows) * width
    return sheet[top : top + height, left : left + width]


def _tiles_and_targets(item: ViewItem, options: PackOptions, hits: list[bool | None]) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    shapes = [heatmap.shape for target in item.targets for heatmap in target.maps.values()]
    shape = tile_shape(shapes[0], options.map_side) if shapes else (1, 1)
    tiles: list[np.ndarray] = []
    targets = []
    for target, hit in zip(item.targets, hits, strict=True):
        rows = {}
        for kind in MAP_KINDS:
            if kind in target.maps:
                rows[kind] = len(tiles)
                tiles.append(quantise(target.maps[kind], shape))
        targets.append(_target_payload(item, target, rows, hit, options))
    return tiles, targets


def _target_payload(item: ViewItem, target: ViewTarget, rows: dict[str, int], hit: bool | None, options: PackOptions) -> dict[str, Any]:
    attributions = target.word_attributions
    return {
        "label": target.label,
        "score": _number(target.score),
        "logprob": _number(target.logprob),
        "peak": list(target.peak_xy) if target.peak_xy is not None else None,
        "bbox": list(target.bbox) if target.bbox is not None else None,
        "truth": [list(box) for box in item.truth.get(target.label.lower(), [])],
        "hit": hit,
        "extra": target.extra,
        "maps": rows,
        "guided": encode_image(target.guided, options.image_side, options.jpeg_quality) if target.guided is not None else None,
        "attributions": attributions,
        "attributionColours": _signed_colours(attributions) if attributions else None,
    }


SHEET_SIDE = 8192  # tiles wrap into columns beyond this height (browsers cap canvas sides)


def _sheet(tiles: list[np.ndarray]) -> dict[str, Any]:
    """All tiles of an item in one grayscale PNG: tile i at column i % columns, row
    i // columns, as many rows as fit in :data:`SHEET_SIDE` pixels."""
    if not tiles:
        return {"sheet": None, "tileWidth": 0, "tileHeight": 0, "tileRows": 1}
    height, width = tiles[0].shape
    rows = max(1, min(len(tiles), SHEET_SIDE // height))
    columns = -(-len(tiles) // rows)
    sheet = np.zeros((rows * height, columns * width), np.uint8)
    for index, tile in enumerate(tiles):
        row, column = index % rows, index // rows
        sheet[row * height : (row + 1) * height, column * width : (column + 1) * width] = tile
    buffer = io.BytesIO()
    Image.fromarray(sheet, mode="L").save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"sheet": f"data:image/png;base64,{encoded}", "tileWidth": int(width), "tileHeight": int(height), "tileRows": int(rows)}


def _signed_colours(values: list[float]) -> list[str]:
    """Hex colours of signed scores, red helps and blue hurts, as in the strip figures."""
    scale = max((abs(value) for value in values), default=0.0) or 1.0
    rgba = colormaps["coolwarm"](0.5 + 0.5 * np.asarray(values) / scale)
    return ["#%02x%02x%02x" % tuple(int(round(c * 255)) for c in colour[:3]) for colour in rgba]


def _entry(item: ViewItem, hits: list[bool | None], options: PackOptions, thumbnail: bool) -> dict[str, Any]:
    own = [(target, hit) for target, hit in zip(item.targets, hits, strict=True) if not target.extra]
    # a caption's weakest word; for answers and classes the first target (the prediction or the
    # given answer), since the runners-up of a --top K run are unlikely by design
    judged_words = own if item.kind == "caption" else own[:1]
    logprobs = [(target.logprob, target.label) for target, _ in judged_words if target.logprob is not None]
    peaks = [peak_strength(target.maps["heatmap"]) for target, _ in own if "heatmap" in target.maps]
    judged = [hit for _, hit in own if hit is not None]
    lowest = min(logprobs, default=None)
    return {
        "name": item.name,
        "kind": item.kind,
        "text": item.text,
        "answer": item.answer,
        "error": item.error,
        "targets": len(own),
        "minLogprob": _number(lowest[0]) if lowest else None,
        "minWord": lowest[1] if lowest else None,
        "weakestPeak": _number(min(peaks)) if peaks else None,
        "pointing": _number(sum(judged) / len(judged)) if judged else None,
        "thumb": encode_image(item.pixels, options.thumb_side, 80) if thumbnail and item.pixels is not None else None,
    }


def _number(value: float | None) -> float | None:
    """A JSON-safe float (NaN and infinities become None), rounded to 6 significant digits."""
    if value is None or not np.isfinite(value):
        return None
    return float(f"{float(value):.6g}")
