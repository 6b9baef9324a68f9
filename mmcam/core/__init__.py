"""The shared Grad-CAM core: hooks, batched gradients, map methods, guided backprop."""

from .gradcam import GradCAM, GradientRecord, guided_gradcam
from .layers import default_layer, resolve_layer
from .localize import localization_box, peak_xy
from .maps import (
    ALL_METHODS,
    GUIDED_PREFIX,
    at_size,
    guided_backprop_at_original_size,
    guided_magnitude,
    maps_at_original_size,
    normalize,
    raw_maps,
    split_method,
    upsample,
)
from .methods import METHODS, get_method
from .tokens import TokenGrid

__all__ = [
    "ALL_METHODS",
    "GUIDED_PREFIX",
    "at_size",
    "guided_backprop_at_original_size",
    "guided_magnitude",
    "maps_at_original_size",
    "raw_maps",
    "split_method",
    "METHODS",
    "GradCAM",
    "GradientRecord",
    "TokenGrid",
    "default_layer",
    "get_method",
    "guided_gradcam",
    "localization_box",
    "normalize",
    "peak_xy",
    "resolve_layer",
    "upsample",
]
