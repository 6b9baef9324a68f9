"""The viewer's HTML: a page (``viewer.html``) or a fragment (a notebook cell), the same
script and styles in both. Data sits in inert ``<script type="application/json">`` blocks,
escaped so that no text (``</script>``, quotes, any unicode) can end them early."""

from __future__ import annotations

import html
import json
import uuid
from functools import cache
from importlib import resources
from typing import Any

from .colormap import OVERLAY_ALPHA, lookup_table

# No network at all: only inline scripts and styles, and images from data: URLs.
_POLICY = "default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
PAGE_BOX = 480  # CSS pixels of the longest side of the image on the item page
INLINE_BOX = 360


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&``
    (and the JavaScript line separators) are written as \\u escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for character in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(character, f"\\u{ord(character):04x}")
    return text


def new_root_id() -> str:
    """A fresh element id, so that several viewers on one page never share ids."""
    return f"mmcam-{uuid.uuid4().hex[:12]}"


def document_start(title: str) -> str:
    """Everything of the page before the viewer's root element."""
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_POLICY}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{html.escape(title)}</title><style>body{{margin:0;background:#fff}}\n{_asset('viewer.css')}</style>"
        "</head><body>\n"
    )


def document_end() -> str:
    return "</body></html>\n"


def root_start(root_id: str, *, page: bool, styles: bool = False) -> str:
    """The opening of the viewer's root element (``styles`` adds its CSS, for a fragment)."""
    style = f"<style>{_asset('viewer.css')}</style>" if styles else ""
    # shown only where scripts do not run (an untrusted notebook); the script removes it
    fallback = "<p class='mm-fallback'>mmcam viewer: this view needs JavaScript (in Jupyter: a trusted notebook).</p>"
    return f"<div class='mmcam-viewer {'mm-page' if page else 'mm-inline'}' id='{root_id}'>{style}{fallback}\n"


def item_script(index: int, payload: dict[str, Any]) -> str:
    """One item's data block, parsed by the page only when the item is shown."""
    return f"<script type='application/json' data-mmcam-item='{index}'>{script_json(payload)}</script>\n"


def root_end(*, mode: str, title: str, meta: dict[str, Any], entries: list[dict[str, Any]] | None, page: bool) -> str:
    """The index and configuration blocks, the script that mounts the viewer, the closing tag.
    ``mode`` is "run" (dataset page and item pages) or "item" (one item)."""
    config = {
        "mode": mode,
        "page": page,
        "title": title,
        "meta": meta,
        "box": PAGE_BOX if page else INLINE_BOX,
        "alpha": OVERLAY_ALPHA,
        "lut": [round(float(value), 3) for value in lookup_table().ravel()],
    }
    return (
        (f"<script type='application/json' data-mmcam='index'>{script_json(entries)}</script>\n" if entries is not None else "")
        + f"<script type='application/json' data-mmcam='config'>{script_json(config)}</script>\n"
        + f"<script>{_asset('viewer.js')}</script></div>\n"
    )


def item_fragment(payload: dict[str, Any], title: str, meta: dict[str, Any]) -> str:
    """A self-contained item view for a notebook cell: its own ids, styles and script."""
    return (
        root_start(new_root_id(), page=False, styles=True)
        + item_script(0, payload)
        + root_end(mode="item", title=title, meta=meta, entries=None, page=False)
    )


@cache
def _asset(name: str) -> str:
    text = (resources.files("mmcam.viewer") / "static" / name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():
        raise ValueError(f"{name} must not contain a closing script or style tag")
    return text
