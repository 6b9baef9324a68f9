"""mmcam: Grad-CAM for image captioning and visual question answering, word by word."""

from .core import GradCAM, TokenGrid, guided_gradcam, localization_box
from .targets import ClassTarget, ContrastTarget

__all__ = [
    "ClassTarget",
    "ContrastTarget",
    "GradCAM",
    "TokenGrid",
    "guided_gradcam",
    "localization_box",
]
__version__ = "0.1.0"
