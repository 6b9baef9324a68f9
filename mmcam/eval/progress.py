"""A minimal progress bar on stderr for long evaluations."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


def progress(items: Iterable[Item], label: str, *, total: int | None = None, enabled: bool = True) -> Iterator[Item]:
    """Yield ``items``, drawing ``label [####    ] k/n`` on stderr when ``enabled``."""
    if not enabled:
        yield from items
        return
    start = time.perf_counter()
    count = 0
    for count, item in enumerate(items, start=1):
        yield item
        width = 30
        done = int(width * count / total) if total else 0
        bar = f"[{'#' * done}{' ' * (width - done)}] {count}/{total}" if total else f"{count}"
        print(f"\r{label} {bar} {time.perf_counter() - start:.0f}s", end="", file=sys.stderr, flush=True)
    if count:
        print(file=sys.stderr)
