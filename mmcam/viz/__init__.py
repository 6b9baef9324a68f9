"""Pictures of explanations: overlays, word strips, HTML reports."""

from .overlay import guided_image, overlay, save_png

__all__ = ["guided_image", "overlay", "save_png"]
