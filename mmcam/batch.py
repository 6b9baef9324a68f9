"""Batch runs from JSON-lines files: every finished item is kept, failures don't stop the rest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
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

SETTINGS_KEY = "settings"


def run_batch(
    items: Sequence[BatchItem],
    stems: Sequence[str],
    explain: Explain,
    emit: Callable[[dict[str, Any]], None],
    *,
    out: Path | None,
    resume: bool,
    settings: Mapping[str, Any] | None = None,
    chunk: int = 1,
) -> int:
    """Explain ``items`` in chunks; emit one record per item, in order. A failed item, or one
    whose record ``emit`` cannot print, emits ``{"image", "error"}`` and the rest go on.

    With ``out``, each finished record is saved atomically as ``STEM.json`` beside its maps,
    with one more key, ``"settings"``: the command's ``settings`` plus the item's own fields
    (image, caption, question, answer). ``resume`` re-emits a saved record (without that key)
    only when the settings that made it equal this run's; otherwise the item is done again.
    Returns 1 if any item failed, else 0."""
    failed = False
    for group in _chunks(list(zip(items, stems, strict=True)), chunk):
        records: list[dict[str, Any]] = [{} for _ in group]  # emitted in the items' order
        pending = []
        for position, (item, stem) in enumerate(group):
            saved = _saved_record(out / f"{stem}.json", item_settings(item, settings)) if resume and out else None
            if item.error:
                failed = True
                records[position] = {"image": item.image, "error": item.error}
            elif saved is not None:
                records[position] = saved
            else:
                pending.append((position, item, stem))
        results = explain([item for _, item, _ in pending], [stem for _, _, stem in pending]) if pending else []
        for (position, item, stem), result in zip(pending, results, strict=True):
            if isinstance(result, Exception):
                failed = True
                records[position] = {"image": item.image, "error": error_line(result)}
                continue
            if out is not None:
                data = (json.dumps({**result, SETTINGS_KEY: item_settings(item, settings)}) + "\n").encode()
                write_atomic(out / f"{stem}.json", lambda handle, data=data: handle.write(data))
            records[position] = result
        for record in records:
            failed |= not _emit_guarded(emit, record)
    return 1 if failed else 0


def item_settings(item: BatchItem, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """What made an item's record, as JSON values: the command's settings and the item's
    image and fields (its loaded image left out)."""
    fields = {key: value for key, value in item.fields.items() if key != "loaded"}
    return json.loads(json.dumps({**(settings or {}), "image": item.image, **fields}))


def _saved_record(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record saved at ``path`` when the same settings made it, else None (no file, an
    unreadable one, one from an older mmcam without settings, or other settings)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get(SETTINGS_KEY) != settings:
        return None
    return {key: value for key, value in saved.items() if key != SETTINGS_KEY}


def _emit_guarded(emit: Callable[[dict[str, Any]], None], record: dict[str, Any]) -> bool:
    """Emit ``record``; when that fails, emit its error line instead. True if it was a success."""
    try:
        emit(record)
    except BrokenPipeError:
        raise
    except Exception as error:  # one unprintable record must not end the batch
        emit({"image": record.get("image", ""), "error": f"could not print the record: {error_line(error)}"})
        return False
    return "error" not in record


def _chunks(sequence: list, size: int) -> Iterator[list]:
    for start in range(0, len(sequence), size):
        yield sequence[start : start + size]


def error_line(error: BaseException) -> str:
    """An exception as one line for people: an :class:`InputError`'s message, any other
    exception's type and the first line of its message (``RuntimeError: ...``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, InputError) and lines:
        return lines[0]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
