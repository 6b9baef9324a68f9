"""Writing viewers: ``OUT/viewer.html`` for a run's output, a page for a list of explanations
(the demo), and notebook fragments. Items are read, packed and written one at a time."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import write_atomic
from ..io import InputError
from .convert import item_from_explanation
from .items import ViewItem, ViewRun
from .pack import PackOptions, pack_item
from .page import document_end, document_start, item_fragment, item_script, new_root_id, root_end, root_start
from .parquet import is_parquet_output, read_parquet
from .records import read_records
from .truth import GroundTruth

if TYPE_CHECKING:
    from ..explanation import Explanation

VIEWER_FILE = "viewer.html"


def read_output(out: str | os.PathLike, boxes: str | os.PathLike | None = None) -> ViewRun:
    """A run's output folder (JSON records or a Parquet manifest) as a :class:`ViewRun`;
    ``boxes`` adds ground-truth boxes (and so pointing) from a boxes file."""
    folder = Path(out)
    if not folder.exists():
        raise InputError(f"output folder not found: {out}")
    if not folder.is_dir():
        raise InputError(f"{out} is not a folder; give the --out folder of a batch run")
    run = read_parquet(folder) if is_parquet_output(folder) else read_records(folder)
    if boxes is not None:
        truth = GroundTruth(boxes)
        run.items = _with_truth(run.items, truth)
    return run


def write_viewer(out: str | os.PathLike, *, boxes: str | os.PathLike | None = None, options: PackOptions = PackOptions()) -> Path:
    """Write ``OUT/viewer.html`` for the run in ``out``, atomically; returns its path."""
    run = read_output(out, boxes)
    return write_items(Path(out) / VIEWER_FILE, run.items, title=run.title, meta=run.meta, options=options)


def write_explanations(path: str | os.PathLike, explanations: Sequence[tuple[str, Explanation]], *, title: str, options: PackOptions = PackOptions()) -> Path:
    """A viewer page for named explanations (``(name, explanation)`` pairs), atomically."""
    items = (item_from_explanation(explanation, name) for name, explanation in explanations)
    return write_items(path, items, title=title, meta={"source": title}, options=options)


def write_items(path: str | os.PathLike, items: Iterable[ViewItem], *, title: str, meta: dict[str, Any], options: PackOptions = PackOptions()) -> Path:
    """Write a dataset-and-item viewer page over ``items`` to ``path``, atomically."""

    def write(handle) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="\n")
        text.write(document_start(title) + root_start(new_root_id(), page=True))
        entries = []
        for index, item in enumerate(items):
            packed = pack_item(item, options)
            text.write(item_script(index, packed.payload))
            entries.append(packed.entry)
        text.write(root_end(mode="run", title=title, meta=meta, entries=entries, page=True) + document_end())
        text.flush()
        text.detach()

    return write_atomic(path, write)


def explanation_html(explanation: Explanation, options: PackOptions = PackOptions(map_side=256, image_side=512)) -> str:
    """The interactive item view of ``explanation`` as a self-contained HTML fragment."""
    item = item_from_explanation(explanation)
    payload = pack_item(item, options, thumbnail=False).payload
    return item_fragment(payload, item.name, {"model": item.model, "method": item.method, "layer": item.layer})


def run_html(run: ViewRun, options: PackOptions = PackOptions()) -> str:
    """A run's dataset and item views as a self-contained HTML fragment (a notebook cell)."""
    buffer = io.StringIO()
    buffer.write(root_start(new_root_id(), page=False, styles=True))
    entries = []
    for index, item in enumerate(run.items):
        packed = pack_item(item, options)
        buffer.write(item_script(index, packed.payload))
        entries.append(packed.entry)
    buffer.write(root_end(mode="run", title=run.title, meta=run.meta, entries=entries, page=False))
    return buffer.getvalue()


class Viewer:
    """A run's output for notebooks: shows itself as the interactive viewer (``_repr_html_``)."""

    def __init__(self, out: str | os.PathLike, boxes: str | os.PathLike | None = None) -> None:
        self.out = Path(out)
        self.boxes = boxes
        read_output(out, boxes)  # fail now, in the cell that opened it, on bad input

    def _repr_html_(self) -> str:
        return run_html(read_output(self.out, self.boxes))

    def write(self) -> Path:
        """Write ``OUT/viewer.html``; returns its path."""
        return write_viewer(self.out, boxes=self.boxes)


def _with_truth(items: Iterator[ViewItem], truth: GroundTruth) -> Iterator[ViewItem]:
    for item in items:
        truth.attach(item)
        yield item
