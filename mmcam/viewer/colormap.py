"""The heatmap colour map as a lookup table, so the page colours maps exactly like the PNG
overlays (:func:`mmcam.viz.overlay.overlay`)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

OVERLAY_CMAP = "jet"  # the default of mmcam.viz.overlay.overlay
OVERLAY_ALPHA = 0.5


def lookup_table(name: str = OVERLAY_CMAP) -> np.ndarray:
    """(256, 3) float RGB in [0, 255]: entry q is the colour of map value q / 255, as
    matplotlib colours it (the page quantises maps to uint8 q = round(255 * value))."""
    return colormaps[name](np.arange(256) / 255.0)[:, :3] * 255.0
