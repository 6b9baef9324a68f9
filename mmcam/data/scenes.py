"""Generated captioned scenes with ground truth: the toy world the shipped captioner is trained on.

A scene is a 128x128 RGB image on a light background holding 1 to 3 coloured shapes (easy-VQA's
palette and shapes), captioned ``"a red circle and a blue triangle"`` with objects named from left
to right. Every caption word that names a colour or a shape knows which object it refers to and
that object's pixel mask, so a per-word heatmap can be scored against where the object really is.

Scenes come from a seeded ``numpy.random.Generator`` only, so a split is the same on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
}
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")

SPLIT_SEEDS: dict[str, int] = {"train": 20_240_001, "val": 20_240_002, "test": 20_240_003}

MIN_OBJECTS, MAX_OBJECTS = 1, 3
MIN_SIZE, MAX_SIZE = 16, 48  # side of the square cell a shape is drawn in, in pixels
BACKGROUND_RANGE = (230, 255)  # each background channel is drawn uniformly from this, inclusive
COLOR_JITTER = 12  # each object channel moves by up to this much, then is clipped to [0, 255]
MIN_GAP = 4  # pixels of background kept between the cells of two objects
MIN_CENTRE_DX = 4  # box centres this far apart horizontally, so "left to right" is never a tie
SUPERSAMPLING = 4  # shapes are drawn this many times larger, then averaged down (anti-aliasing)
_MAX_PLACEMENT_TRIES = 100


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene.

    ``box`` is ``(x0, y0, x1, y1)``: the inclusive pixel extent of ``mask`` (x to the right, y down).
    ``mask`` is ``(H, W)`` bool, the pixels at least half covered by the shape.
    """

    color: str
    shape: str
    box: tuple[int, int, int, int]
    mask: np.ndarray

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


@dataclass(frozen=True)
class Scene:
    """An image, its objects from left to right, and its caption with word-to-object links.

    ``image`` is ``(H, W, 3)`` uint8 RGB. ``word_objects[i]`` is the index in ``objects`` of the
    object that ``words[i]`` names (colour and shape words), or None for ``"a"`` and ``"and"``.
    """

    image: np.ndarray
    objects: tuple[SceneObject, ...]
    caption: str
    words: tuple[str, ...]
    word_objects: tuple[int | None, ...]


def word_kind(word: str) -> str:
    """``"color"``, ``"shape"`` or ``"other"`` (``"a"``, ``"and"``, anything unknown)."""
    if word in COLORS:
        return "color"
    if word in SHAPES:
        return "shape"
    return "other"


def _shape_coverage(shape: str, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Fraction of each pixel of a ``(cell, cell)`` square covered by ``shape``, in [0, 1].

    Circles fill the cell; triangles point up with their base along the cell's bottom edge;
    rectangles span the cell one way and 55-85% of it the other, so they are never squares.
    """
    scale = SUPERSAMPLING
    canvas = Image.new("L", (cell * scale, cell * scale), 0)
    draw = ImageDraw.Draw(canvas)
    last = cell * scale - 1
    if shape == "circle":
        draw.ellipse((0, 0, last, last), fill=255)
    elif shape == "triangle":
        draw.polygon([(last / 2, 0), (last, last), (0, last)], fill=255)
    elif shape == "rectangle":
        short = int(round(rng.uniform(0.55, 0.85) * cell * scale))
        offset = (cell * scale - short) // 2
        if rng.random() < 0.5:
            draw.rectangle((0, offset, last, offset + short - 1), fill=255)
        else:
            draw.rectangle((offset, 0, offset + short - 1, last), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    supersampled = np.asarray(canvas, dtype=np.float32) / 255.0
    return supersampled.reshape(cell, scale, cell, scale).mean(axis=(1, 3))


def _cells_apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two square cells ``(x, y, side)`` are separated by at least ``MIN_GAP`` pixels."""
    (ax, ay, aside), (bx, by, bside) = a, b
    apart_x = ax + aside + MIN_GAP <= bx or bx + bside + MIN_GAP <= ax
    apart_y = ay + aside + MIN_GAP <= by or by + bside + MIN_GAP <= ay
    return apart_x or apart_y


def _place_cells(rng: np.random.Generator, count: int, size: int) -> list[tuple[int, int, int]]:
    """Up to ``count`` non-touching square cells ``(x, y, side)`` inside a ``size``-pixel image.

    Cells are placed one at a time by rejection sampling; one that finds no room is dropped, which
    only happens in crowded scenes and keeps generation bounded.
    """
    cells: list[tuple[int, int, int]] = []
    for _ in range(count):
        for _ in range(_MAX_PLACEMENT_TRIES):
            side = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            candidate = (x, y, side)
            centre = x + (side - 1) / 2
            if all(
                _cells_apart(candidate, cell)
                and abs(centre - (cell[0] + (cell[2] - 1) / 2)) >= MIN_CENTRE_DX
                for cell in cells
            ):
                cells.append(candidate)
                break
    return cells


def _pick_kinds(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """``count`` distinct (colour, shape) pairs."""
    pairs = [(color, shape) for color in COLORS for shape in SHAPES]
    picked = rng.choice(len(pairs), size=count, replace=False)
    return [pairs[int(i)] for i in picked]


def _caption(objects: tuple[SceneObject, ...]) -> tuple[tuple[str, ...], tuple[int | None, ...]]:
    """Caption words ``a COLOUR SHAPE and a COLOUR SHAPE ...`` and the object each word names."""
    words: list[str] = []
    word_objects: list[int | None] = []
    for index, obj in enumerate(objects):
        if index:
            words.append("and")
            word_objects.append(None)
        words += ["a", obj.color, obj.shape]
        word_objects += [None, index, index]
    return tuple(words), tuple(word_objects)


def render_scene(rng: np.random.Generator, size: int = 128) -> Scene:
    """Draw one random scene of ``size`` x ``size`` pixels with 1 to 3 objects, and caption it.

    The background is one light colour (each channel uniform in 230-255); each object is a
    jittered palette colour blended in by its anti-aliased coverage.
    """
    if size < MAX_SIZE:
        raise ValueError(f"size must be at least {MAX_SIZE} pixels to fit the largest shape; got {size}")
    background = rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1, size=3)
    image = np.broadcast_to(background.astype(np.float32), (size, size, 3)).copy()
    cells = _place_cells(rng, int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)), size)
    objects: list[SceneObject] = []
    for (x, y, side), (color, shape) in zip(cells, _pick_kinds(rng, len(cells)), strict=True):
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
        rgb = np.clip(np.array(COLORS[color]) + jitter, 0, 255).astype(np.float32)
        coverage = _shape_coverage(shape, side, rng)[..., None]  # (side, side, 1)
        patch = image[y : y + side, x : x + side]
        patch[...] = patch * (1.0 - coverage) + rgb * coverage
        covered = coverage[..., 0] >= 0.5  # (side, side)
        mask = np.zeros((size, size), dtype=bool)
        mask[y : y + side, x : x + side] = covered
        cols = np.flatnonzero(covered.any(axis=0))
        rows = np.flatnonzero(covered.any(axis=1))
        box = (x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]), y + int(rows[-1]))
        objects.append(SceneObject(color=color, shape=shape, box=box, mask=mask))
    ordered = tuple(sorted(objects, key=lambda obj: obj.centre_x))
    words, word_objects = _caption(ordered)
    return Scene(
        image=np.rint(image).astype(np.uint8),
        objects=ordered,
        caption=" ".join(words),
        words=words,
        word_objects=word_objects,
    )


def iter_split(split: str, n: int) -> Iterator[Scene]:
    """The scenes of ``make_split(split, n)`` one at a time, so callers need not hold them all."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_SEEDS)}")
    if n < 0:
        raise ValueError(f"n must be non-negative; got {n}")
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    # A generator expression, so a bad split name fails here rather than at the first next().
    return (render_scene(rng) for _ in range(n))


def make_split(split: str, n: int) -> list[Scene]:
    """The first ``n`` scenes of ``split`` ("train", "val" or "test"), each split from its own seed.

    The same call always returns identical scenes, and ``make_split(s, m)`` is a prefix of
    ``make_split(s, n)`` for ``m <= n``.
    """
    return list(iter_split(split, n))
