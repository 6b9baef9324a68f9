"""Explanation results: maps at the original image size, what they explain, save and plot."""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ._files import write_atomic
from .core.localize import localization_box, peak_xy
from .io import LoadedImage
from .viz.figure import strip_figure
from .viz.overlay import guided_image, overlay, save_png
from .viz.report import ReportSection, write_report


@dataclass
class Explanation:
    """Heatmaps for T targets of one image (a class, a caption word, a VQA answer each).

    heatmaps: (T, H, W) float32 in [0, 1] at the ORIGINAL image size; guided: (T, H, W, 3)
    Guided Grad-CAM or None; counterfactual: (T, H, W) or None; attention: (T, H, W) the model's
    own attention per target, when it has one. ``labels[t]`` names target t, ``indices[t]`` is
    its class index, word position or answer index, ``scores[t]`` its y^c. ``info`` holds what
    is specific to the task (predictions, caption, question word attributions, ...).
    """

    kind: str
    image: LoadedImage
    model: str
    layer: str
    method: str
    labels: list[str]
    indices: list[int]
    scores: np.ndarray
    heatmaps: np.ndarray
    guided: np.ndarray | None = None
    counterfactual: np.ndarray | None = None
    attention: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.labels)
        if self.heatmaps.shape != (count, *self.image.size):
            raise ValueError(
                f"heatmaps {self.heatmaps.shape} do not match {count} targets at image size "
                f"{self.image.size}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def peak_xy(self, target: int) -> tuple[int, int]:
        """(x, y) of the maximum of map ``target`` in original-image pixels."""
        return peak_xy(self.heatmaps[target])

    def bbox(self, target: int) -> tuple[int, int, int, int] | None:
        """The paper's localization box (15% of max, largest segment) of map ``target``."""
        return localization_box(self.heatmaps[target])

    def titles(self) -> list[str]:
        """Panel titles: each target's label and its probability (or score)."""
        probabilities = self.info.get("probabilities")
        if self.kind == "caption":
            probabilities = np.exp(self.info["logprobs"]).tolist()
        if probabilities is None and self.kind == "classify":
            by_index = {p["index"]: p["probability"] for p in self.info.get("predictions", [])}
            probabilities = [by_index.get(index) for index in self.indices]
        probabilities = probabilities or [None] * len(self)
        return [
            f"{label}\np={p:.2f}" if p is not None else f"{label}\ny={score:.3g}"
            for label, p, score in zip(self.labels, probabilities, self.scores, strict=True)
        ]

    def figure(self, titles: list[str] | None = None) -> Figure:
        """A strip: the image and one overlay per target, titled with the label and its
        probability; a VQA explanation also shows the question words' attributions."""
        attributions = self.info.get("word_attributions")
        words = None
        if attributions is not None:
            words = list(zip(self.info["question_words"], np.asarray(attributions[0]).tolist(), strict=True))
        return strip_figure(
            self.image.pixels, self.heatmaps, titles or self.titles(), suptitle=self.info.get("title"), word_scores=words
        )

    def guided_figure(self) -> Figure | None:
        """The Guided Grad-CAM strip, or None when it was not computed."""
        if self.guided is None:
            return None
        panels = [guided_image(guided) for guided in self.guided]
        return strip_figure(self.image.pixels, self.heatmaps, self.titles(), suptitle="Guided Grad-CAM", panels=panels)

    def attention_figure(self) -> Figure | None:
        """The model's own attention per target, or None when the model has none."""
        if self.attention is None:
            return None
        return strip_figure(self.image.pixels, self.attention, self.titles(), suptitle="model attention")

    def plot(self, titles: list[str] | None = None) -> Figure:
        """Alias of :meth:`figure`, for notebooks."""
        return self.figure(titles)

    def save(self, directory: str | os.PathLike, stem: str) -> list[dict[str, str]]:
        """Write, per target, the map (.npy float32, original size), an overlay PNG and (when
        computed) a Guided Grad-CAM PNG, counterfactual map and the model's attention map
        (``_attention.npy``), plus a strip figure; contrastive
        maps (``info["contrast"]``, named by ``info["contrast_labels"]``) as .npy and overlay;
        every file is written atomically. Returns the paths written, one dict per target."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written: list[dict[str, str]] = []
        for target, label in enumerate(self.labels):
            base = directory / f"{stem}_{target:02d}_{_slug(label)}"
            paths = {"heatmap": str(_save_npy(base.with_suffix(".npy"), self.heatmaps[target]))}
            overlay_path = Path(f"{base}_overlay.png")
            paths["overlay"] = str(save_png(overlay_path, overlay(self.image.pixels, self.heatmaps[target])))
            if self.guided is not None:
                guided_path = Path(f"{base}_guided.png")
                paths["guided"] = str(save_png(guided_path, guided_image(self.guided[target])))
            if self.counterfactual is not None:
                paths["counterfactual"] = str(_save_npy(Path(f"{base}_counterfactual.npy"), self.counterfactual[target]))
            if self.attention is not None:
                paths["attention"] = str(_save_npy(Path(f"{base}_attention.npy"), self.attention[target]))
            written.append(paths)
        contrasts = self.info.get("contrast")
        if contrasts is not None:
            for label, heatmap in zip(self.info["contrast_labels"], contrasts, strict=True):
                base = directory / f"{stem}_contrast_{_slug(label)}"
                _save_npy(base.with_suffix(".npy"), heatmap)
                save_png(Path(f"{base}_overlay.png"), overlay(self.image.pixels, heatmap))
        figures = [(f"{stem}_strip.png", self.figure())]
        if self.kind != "classify":
            figures += [(f"{stem}_{name}.png", figure) for name, figure in (("guided", self.guided_figure()), ("attention", self.attention_figure())) if figure is not None]
        for name, figure in figures:
            _save_figure(directory / name, figure)
        if self.kind != "classify":
            title = self.info.get("title") or stem
            section = ReportSection(f"{self.model}: {title}", [(name, f"{self.method} on {self.layer}") for name, _ in figures])
            write_report(directory / f"{stem}.html", f"mmcam {self.kind}: {stem}", [section])
        return written

    def _repr_html_(self) -> str:
        """The interactive item view (hover a word, see its map) for Jupyter: self-contained."""
        from .viewer import explanation_html

        return explanation_html(self)

    def save_figure(self, path: str | os.PathLike) -> Path:
        """Write :meth:`figure` as a PNG, atomically."""
        return _save_figure(path, self.figure())


def _save_figure(path: str | os.PathLike, figure: Figure) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def _save_npy(path: Path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:40] or "target"
