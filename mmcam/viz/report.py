"""A static HTML page that shows a folder of figures."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._files import write_atomic


@dataclass(frozen=True)
class ReportSection:
    """A titled group of figures; ``figures`` are (relative path, caption) pairs, ``links``
    (relative path, text) pairs."""

    title: str
    figures: Sequence[tuple[str, str]]
    text: str = ""
    table: Sequence[Sequence[str]] = field(default_factory=tuple)
    links: Sequence[tuple[str, str]] = field(default_factory=tuple)


def write_report(path: str | os.PathLike, title: str, sections: Sequence[ReportSection]) -> Path:
    """Write ``index.html`` listing ``sections``; image paths are relative to its folder."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "figure{display:inline-block;margin:.5em;vertical-align:top}"
        "img{max-width:100%;border:1px solid #ccc}figcaption{font-size:90%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        for target, text in section.links:
            parts.append(f"<p><a href='{html.escape(target)}'>{html.escape(text)}</a></p>")
        if section.table:
            header, *rows = section.table
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        for source, caption in section.figures:
            parts.append(
                f"<figure><img src='{html.escape(source)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    document = "\n".join(parts).encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(document))
