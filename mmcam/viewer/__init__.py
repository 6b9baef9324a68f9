"""The offline HTML viewer over a run's output: ``mmcam view OUT`` writes ``OUT/viewer.html``,
one self-contained file (no server, no network) with a dataset page and an item page where
hovering a word shows its map; in notebooks an Explanation shows the same item view inline.

Modules, one job each: ``records`` and ``parquet`` read outputs, ``convert`` reads an
Explanation, ``truth`` adds ground-truth pointing, ``pack`` encodes maps and images, ``page``
holds the HTML (``static/`` its script and styles), ``write`` writes files and fragments.
"""

from .pack import PackOptions
from .write import VIEWER_FILE, Viewer, explanation_html, read_output, write_explanations, write_items, write_viewer

__all__ = ["VIEWER_FILE", "PackOptions", "Viewer", "explanation_html", "read_output", "write_explanations", "write_items", "write_viewer"]
