"""``mmcam demo``: explain bundled samples with the shipped models and write an HTML report."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .registry import load
from .viz.report import ReportSection, write_report

SAMPLE_PHOTOS = ("chelsea.jpg", "coffee.jpg", "astronaut.jpg")


def sample_path(name: str) -> Path:
    """Path of a bundled sample image."""
    return Path(str(resources.files("mmcam.data") / "samples" / name))


def _classification_section(out: Path) -> ReportSection:
    adapter = load("efficientnet_lite0")
    figures = []
    paths = [sample_path(name) for name in SAMPLE_PHOTOS]
    for path, explanation in zip(paths, adapter.explain_batch(paths), strict=True):
        written = explanation.save(out / "classify", path.stem)
        top = explanation.info["predictions"][0]
        caption = f"{path.name}: {top['label']} (p={top['probability']:.2f}), Grad-CAM on {explanation.layer}"
        figures.append((f"classify/{path.stem}_strip.png", caption))
        figures.append((str(Path(written[0]["guided"]).relative_to(out)), f"{path.name}: Guided Grad-CAM"))
    return ReportSection(
        "Classification: EfficientNet-Lite0 (ImageNet)",
        figures,
        text="Grad-CAM of the top prediction on the last convolutional features (bn2, 7x7).",
    )


SECTIONS: list[Callable[[Path], ReportSection]] = [_classification_section]


def run_demo(out: Path) -> Path:
    """Run every demo section into ``out`` and return the path of ``index.html``."""
    sections = [build(out) for build in SECTIONS]
    return write_report(out / "index.html", "mmcam demo", sections)
