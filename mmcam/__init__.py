"""mmcam: Grad-CAM for image captioning and visual question answering, word by word."""

from . import demo
from .core import GradCAM, TokenGrid, guided_gradcam, localization_box
from .datasets import explain_dataset
from .registry import available_models, load
from .targets import ClassTarget, ContrastTarget

__all__ = [
    "ClassTarget",
    "ContrastTarget",
    "GradCAM",
    "TokenGrid",
    "guided_gradcam",
    "available_models",
    "demo",
    "explain_dataset",
    "load",
    "localization_box",
]
__version__ = "0.1.0"
