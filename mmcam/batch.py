"""Batch runs from JSON-lines files: every finished item is kept, failures don't stop the rest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._files import write_atomic
from .errors import InputError


@dataclass(frozen=True)
class BatchItem:
    """One line of a batch file: its number, the image path, its other fields, or why it is bad."""

    line: int
    image: str
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_batch(path: str | os.PathLike, required: Sequence[str] = ("image",), optional: Sequence[str] = ()) -> list[BatchItem]:
    """Items of a JSON-lines file; blank lines are skipped, bad lines become failed items."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"batch file not found: {path}")
    items = []
    allowed = set(required) | set(optional)
    for number, text in enumerate(source.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            items.append(BatchItem(number, "", error=f"line {number}: invalid JSON ({error.msg})"))
            continue
        problem = _check_fields(record, required, allowed)
        image = str(record.get("image", "")) if isinstance(record, dict) else ""
        if problem:
            items.append(BatchItem(number, image, error=f"line {number}: {problem}"))
        else:
            items.append(BatchItem(number, image, {key: record[key] for key in record if key != "image"}))
    return items


def _check_fields(record: Any, required: Sequence[str], allowed: set[str]) -> str | None:
    if not isinstance(record, dict):
        return f"expected a JSON object with {', '.join(repr(k) for k in required)}"
    missing = [key for key in required if not isinstance(record.get(key), str)]
    if missing:
        return f"missing or non-string field(s): {', '.join(missing)}"
    unknown = sorted(set(record) - allowed)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
    return None


Explain = Callable[[Sequence[BatchItem], Sequence[str]], list[dict[str, Any] | Exception]]


def run_batch(
    items: Sequence[BatchItem],
    stems: Sequence[str],
    explain: Explain,
    emit: Callable[[dict[str, Any]], None],
    *,
    out: Path | None,
    resume: bool,
    chunk: int = 1,
) -> int:
    """Explain ``items`` in chunks; emit one record per item, in order. A failed item emits
    ``{"image", "error"}``. With ``out``, each finished record is saved atomically as
    ``STEM.json`` beside its maps; ``resume`` re-emits saved records instead of recomputing.
    Returns 1 if any item failed, else 0."""
    failed = False
    for group in _chunks(list(zip(items, stems, strict=True)), chunk):
        records: list[dict[str, Any]] = [{} for _ in group]  # emitted in the items' order
        pending = []
        for position, (item, stem) in enumerate(group):
            saved = out / f"{stem}.json" if out else None
            if item.error:
                failed = True
                records[position] = {"image": item.image, "error": item.error}
            elif resume and saved is not None and saved.is_file():
                records[position] = json.loads(saved.read_text())
            else:
                pending.append((position, item, stem))
        results = explain([item for _, item, _ in pending], [stem for _, _, stem in pending]) if pending else []
        for (position, item, stem), result in zip(pending, results, strict=True):
            if isinstance(result, Exception):
                failed = True
                records[position] = {"image": item.image, "error": _one_line(result)}
                continue
            if out is not None:
                data = (json.dumps(result) + "\n").encode()
                write_atomic(out / f"{stem}.json", lambda handle, data=data: handle.write(data))
            records[position] = result
        for record in records:
            emit(record)
    return 1 if failed else 0


def _chunks(sequence: list, size: int) -> Iterator[list]:
    for start in range(0, len(sequence), size):
        yield sequence[start : start + size]


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
