"""Finding and loading the files a run's output points to, wherever the output was moved."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import InputError, load_image


def find_file(recorded: str | None, folder: Path, bases: Sequence[Path] = ()) -> Path | None:
    """The file a record names: first its name inside ``folder`` (the output may have moved
    since the run), then the path as written (absolute, or relative to the working directory
    and to each of ``bases``). None when none exists."""
    if not recorded:
        return None
    path = Path(recorded)
    candidates = [folder / path.name] if path.name else []
    candidates += [path] if path.is_absolute() else [path, *(base / path for base in bases)]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def find_image(recorded: str | None, folder: Path, bases: Sequence[Path] = ()) -> Path | None:
    """The image a record names: the path as written (absolute, or relative to the working
    directory, to ``folder`` and to ``bases``); then its name inside ``folder``."""
    if not recorded:
        return None
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [path, folder / path, *(base / path for base in bases)]
    candidates.append(folder / path.name)
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def read_pixels(path: Path | None, notes: list[str], recorded: str | None) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) of an image file, or None with a note saying why."""
    if path is None:
        notes.append(f"image not found: {recorded}")
        return None
    try:
        return load_image(path).pixels
    except InputError as error:
        notes.append(str(error))
        return None


def read_map(path: Path | None) -> np.ndarray | None:
    """A saved map (.npy, 2-D) as float32, or None when the file is missing or not a 2-D map."""
    if path is None:
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return array.astype(np.float32) if array.ndim == 2 else None


def display_path(path: str | os.PathLike) -> str:
    """A path as the page names it: relative to the working directory when below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
