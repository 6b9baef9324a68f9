"""Atomic file writes: a finished file appears whole or not at all."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it.

    The file gets the mode an ordinary ``open(path, "wb")`` gives a new file: 0o666 less the
    process umask (``tempfile.mkstemp`` would make it 0o600, private to the owner)."""
    path = Path(path)
    descriptor, temporary = _create_beside(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new hidden temporary file in ``path``'s folder, opened for writing with mode 0o666
    (the kernel applies the umask, as for any new file)."""
    for _ in range(100):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporary, _FLAGS, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")
