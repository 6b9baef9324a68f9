"""A Parquet output folder: ``OUT/parts/*.parquet`` committed atomically (written under a
temporary name, then renamed), ``OUT/run.json`` (the run's settings, written first) and
``OUT/manifest.json`` (written last, once every part exists)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._files import write_atomic
from ..errors import InputError
from .rows import COLUMNS

MANIFEST = "manifest.json"
RUN = "run.json"
PARTS = "parts"
FORMAT = "mmcam-parquet/1"


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("--format parquet needs pyarrow: pip install 'mmcam[parquet]'") from None
    return pa, pq


def schema():
    """The columns of every part (one row per item and target; error rows leave most null)."""
    pa, _ = _pyarrow()
    text, whole, real = pa.string(), pa.int64(), pa.float64()
    types = {
        "item": whole, "image": text, "text": text, "answer": text, "target": text, "target_index": pa.int32(),
        "word_index": pa.int32(), "score": real, "logprob": real, "probability": real, "peak_x": pa.int32(),
        "peak_y": pa.int32(), "bbox": pa.list_(pa.int32()), "grid_h": pa.int32(), "grid_w": pa.int32(),
        "map": pa.list_(pa.float32()), "method": text, "layer": text, "model": text, "error": text,
    }
    return pa.schema([(name, types[name]) for name in COLUMNS])


class ParquetOutput:
    """The folder of one run. ``prepare`` refuses a folder that holds another run unless
    ``resume`` (and then only one with the same settings); ``committed`` lists the items whose
    rows are in a committed part, so a resumed run skips exactly those."""

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any], *, resume: bool) -> None:
        self.folder = Path(folder)
        self.parts = self.folder / PARTS
        self.settings = json.loads(json.dumps(settings))
        self.resume = resume
        _pyarrow()

    def check(self) -> None:
        """Refuse to mix results: a folder with a run in it needs ``resume`` and the same settings."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"--out {self.folder} is a file; give a directory")
        started = (self.folder / RUN).is_file() or (self.folder / MANIFEST).is_file() or any(self.parts.glob("*.parquet"))
        if started and not self.resume:
            raise InputError(f"--out {self.folder} already holds a run; pass --resume to finish it, or choose another folder")
        if started and self.resume:
            saved = _read_json(self.folder / RUN)
            if saved is not None and saved.get("settings") != self.settings:
                raise InputError(f"--out {self.folder} holds a run with other settings; --resume needs the same model, method and options")

    def prepare(self, source: str) -> None:
        """Create the folders and record the settings (once, by one process)."""
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"--out {self.folder} cannot be created: {error.strerror}") from None
        for stale in self.parts.glob(".*.tmp"):  # parts a killed run never committed
            stale.unlink(missing_ok=True)
        _write_json(self.folder / RUN, {"format": FORMAT, "input": str(Path(source).resolve()), "settings": self.settings})

    def committed(self) -> set[int]:
        """Items with rows in a committed part."""
        _, pq = _pyarrow()
        done: set[int] = set()
        for part in sorted(self.parts.glob("*.parquet")):
            done.update(int(value) for value in pq.read_table(part, columns=["item"]).column("item").to_pylist())
        return done

    def commit(self, rows: Sequence[dict[str, Any]], rank: int = 0) -> Path | None:
        """Write ``rows`` (whole items) as one part: a temporary file renamed into place."""
        if not rows:
            return None
        pa, pq = _pyarrow()
        name = f"part-{rank:03d}-{min(row['item'] for row in rows):09d}-{uuid.uuid4().hex[:8]}.parquet"
        table = pa.Table.from_pylist(list(rows), schema=schema())
        return write_atomic(self.parts / name, lambda handle: pq.write_table(table, handle))

    def finish(self, info: dict[str, Any]) -> Path:
        """Write ``manifest.json`` over the committed parts: ``info``, the model, method and
        layer the rows name, settings, item and error counts, parts; returns its path."""
        info = dict(info)
        _, pq = _pyarrow()
        parts = sorted(self.parts.glob("*.parquet"))
        items: set[int] = set()
        failed: set[int] = set()
        rows = 0
        for part in parts:
            table = pq.read_table(part, columns=["item", "error", "model", "method", "layer"]).to_pydict()
            for key in ("model", "method", "layer"):
                info.setdefault(key, next((value for value in table[key] if value), None))
            rows += len(table["item"])
            items.update(table["item"])
            failed.update(item for item, error in zip(table["item"], table["error"], strict=True) if error)
        run = _read_json(self.folder / RUN) or {}
        manifest = {
            "format": FORMAT,
            **info,
            "input": run.get("input"),
            "settings": self.settings,
            "items": len(items),
            "failed": len(failed),
            "rows": rows,
            "parts": [f"{PARTS}/{part.name}" for part in parts],
        }
        _write_json(self.folder / MANIFEST, manifest)
        return self.folder / MANIFEST


def _write_json(path: Path, value: dict[str, Any]) -> None:
    data = (json.dumps(value, indent=1) + "\n").encode()
    write_atomic(path, lambda handle: handle.write(data))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
