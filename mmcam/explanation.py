"""Explanation results: maps at the layer's native grid, full-size maps and files on demand.

An :class:`Explanation` keeps what one forward and backward pass produced for one image at the
size it was computed at: per target, the method's map on the layer's grid (h, w), the
counterfactual and contrastive maps, Guided Backprop's gradients at the model's input size, and
the model's own attention. Full-size maps (the original photo's H x W), overlays and files are
made on demand, one target at a time, so memory does not grow with the photo's pixel count times
the number of targets.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ._files import write_atomic
from .core.localize import localization_box, peak_xy
from .core.maps import at_size, guided_gradcam_image, split_method
from .core.guided import GUIDED_RULE, describe
from .io import LoadedImage
from .viz.figure import strip_figure
from .viz.overlay import guided_image, overlay, save_png
from .viz.report import ReportSection, write_report

FIGURE_SIDE = 512  # longest side, in pixels, at which strip figures draw their panels


@dataclass
class Explanation:
    """Maps for T targets of one image (a class, a caption word, a VQA answer each).

    ``grid_maps``: (T, h, w) the method's maps at the layer's grid (unscaled, >= 0);
    ``counterfactual_maps``: (T, h, w) or None; ``contrast_maps``: (K, h, w) or None, named by
    ``contrast_labels`` (the base method's maps of a score difference, never Guided);
    ``guided_gradients``: (T, C, H_in, W_in) Guided Backprop at the model's input, or None; ``attention_maps``: (T, h', w') the model's own attention, or None.
    ``labels[t]`` names target t, ``indices[t]`` is its class index, word position or answer
    index, ``scores[t]`` its y^c. ``info`` holds what is specific to the task (predictions,
    caption, question word attributions, ...). ``guided_activations`` counts, per activation
    kind, the calls Guided Backprop's rule was applied to (empty without a guided pass).
    ``guided_later``: when Guided Backprop is made on first use (``guided="lazy"``), what makes
    ``guided_gradients`` and ``guided_activations`` the first time either is read.

    Full-size maps in [0, 1] at the original image size come from :meth:`heatmap` (one target)
    or the :attr:`heatmaps` stack (T, H, W); likewise :meth:`guided_image`, :meth:`counterfactual_heatmap`,
    :meth:`contrast_heatmap`, :meth:`attention_heatmap`.
    """

    kind: str
    image: LoadedImage
    model: str
    layer: str
    method: str
    labels: list[str]
    indices: list[int]
    scores: np.ndarray
    grid_maps: np.ndarray
    guided_gradients: np.ndarray | None = field(default=None, repr=False, compare=False)
    counterfactual_maps: np.ndarray | None = None
    contrast_maps: np.ndarray | None = None
    contrast_labels: list[str] = field(default_factory=list)
    attention_maps: np.ndarray | None = None
    guided_activations: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    guided_later: Callable[[], tuple[np.ndarray, dict[str, int]]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        count = len(self.labels)
        if self.grid_maps.ndim != 3 or self.grid_maps.shape[0] != count:
            raise ValueError(f"grid maps {self.grid_maps.shape} do not match {count} targets (T, h, w)")
        if self._guided is not None and len(self._guided) != count:
            raise ValueError(f"{len(self._guided)} rows of guided gradients for {count} targets")
        if self._guided_method and self._guided is None and self.guided_later is None:
            raise ValueError(f"method {self.method} needs Guided Backprop gradients")

    def _get_guided(self) -> np.ndarray | None:
        # Guided Backprop made on first use (explain's default, guided="lazy"): one more forward
        # pass under the guided gates, the same numbers as computing it with the maps
        if self._guided is None and self.guided_later is not None:
            gradients, activations = self.guided_later()
            if len(gradients) != len(self.labels):
                raise ValueError(f"{len(gradients)} rows of guided gradients for {len(self.labels)} targets")
            self._guided, self.guided_activations, self.guided_later = gradients, dict(activations), None
        return self._guided

    def _set_guided(self, value: np.ndarray | None) -> None:
        self._guided = value

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and copied with Guided Backprop made first: a copy holds no model."""
        self._get_guided()
        return {**self.__dict__, "guided_later": None}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def _guided_method(self) -> bool:
        """Whether the method is a ``guided_`` variant (map x |Guided Backprop|)."""
        return split_method(self.method)[1]

    @property
    def has_guided(self) -> bool:
        """Whether Guided Backprop is available (computed, or to be computed on first use)."""
        return self._guided is not None or self.guided_later is not None

    @property
    def guided_backprop(self) -> dict[str, Any] | None:
        """Which Guided Backprop rule ran, on which activations, or None without a guided pass:
        ``{"rule": "max(f'(x), 0) * max(grad_out, 0)", "activations": {"relu": 3, ...}}``."""
        if self.guided_gradients is None:
            return None
        return {"rule": GUIDED_RULE, "activations": dict(sorted(self.guided_activations.items()))}

    # -- full-size maps, one target at a time --------------------------------------------------

    def heatmap(self, target: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Map ``target`` (H, W) float32 in [0, 1] at ``size`` (default: the original image's)."""
        return _numpy(at_size(torch.from_numpy(self.grid_maps[target]), size or self.image.size, self._magnitude(target)))

    def _magnitude(self, row: int) -> torch.Tensor | None:
        """|Guided Backprop| of guided-gradient row ``row`` for a ``guided_`` method, else None."""
        if not self._guided_method:
            return None
        return torch.from_numpy(np.abs(self.guided_gradients[row]).sum(axis=0))

    def counterfactual_heatmap(self, target: int, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """The counterfactual map of ``target`` (negated gradients), or None when not computed."""
        if self.counterfactual_maps is None:
            return None
        return _numpy(at_size(torch.from_numpy(self.counterfactual_maps[target]), size or self.image.size))

    def contrast_heatmap(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Contrastive map ``index`` (named ``contrast_labels[index]``): the base method's map
        (``hirescam`` for ``guided_hirescam``) of the score difference."""
        if self.contrast_maps is None:
            raise ValueError("no contrastive maps were computed")
        return _numpy(at_size(torch.from_numpy(self.contrast_maps[index]), size or self.image.size))

    def attention_heatmap(self, target: int, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """The model's own attention for ``target``, or None when the model has none."""
        if self.attention_maps is None:
            return None
        return _numpy(at_size(torch.from_numpy(self.attention_maps[target]), size or self.image.size))

    def guided_image(self, target: int, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Guided Grad-CAM of ``target`` (H, W, C): Guided Backprop upsampled, times the base
        method's map; None without a guided pass."""
        if self.guided_gradients is None:
            return None
        grid = torch.from_numpy(self.grid_maps[target])
        return guided_gradcam_image(grid, torch.from_numpy(self.guided_gradients[target]), size or self.image.size)

    # -- stacks (T, H, W) for convenience: memory grows with T x H x W ---------------------------

    @property
    def heatmaps(self) -> np.ndarray:
        """(T, H, W) float32 in [0, 1] at the original image size."""
        return np.stack([self.heatmap(t) for t in range(len(self))])

    @property
    def counterfactual(self) -> np.ndarray | None:
        """(T, H, W) counterfactual maps, or None."""
        return None if self.counterfactual_maps is None else np.stack([self.counterfactual_heatmap(t) for t in range(len(self))])

    @property
    def contrasts(self) -> np.ndarray | None:
        """(K, H, W) contrastive maps, or None."""
        return None if self.contrast_maps is None else np.stack([self.contrast_heatmap(k) for k in range(len(self.contrast_maps))])

    @property
    def attention(self) -> np.ndarray | None:
        """(T, H, W) attention maps, or None."""
        return None if self.attention_maps is None else np.stack([self.attention_heatmap(t) for t in range(len(self))])

    @property
    def guided(self) -> np.ndarray | None:
        """(T, H, W, C) Guided Grad-CAM images, or None without a guided pass."""
        return None if self.guided_gradients is None else np.stack([self.guided_image(t) for t in range(len(self))])

    def peak_xy(self, target: int) -> tuple[int, int]:
        """(x, y) of the maximum of map ``target`` in original-image pixels."""
        return peak_xy(self.heatmap(target))

    def bbox(self, target: int) -> tuple[int, int, int, int] | None:
        """The paper's localization box (15% of max, largest segment) of map ``target``."""
        return localization_box(self.heatmap(target))

    def place(self, target: int) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
        """``(peak_xy, bbox)`` of map ``target`` from one full-size map; both None when the map
        is all zero."""
        heatmap = self.heatmap(target)
        box = localization_box(heatmap)
        return (None, None) if box is None else (peak_xy(heatmap), box)

    # -- figures and files ---------------------------------------------------------------------

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

    def _display(self) -> tuple[np.ndarray, tuple[int, int]]:
        """The image and size at which figures draw (longest side at most FIGURE_SIDE)."""
        height, width = self.image.size
        scale = min(1.0, FIGURE_SIDE / max(height, width))
        if scale == 1.0:
            return self.image.pixels, (height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        from PIL import Image

        return np.asarray(Image.fromarray(self.image.pixels).resize(size[::-1], Image.BILINEAR)), size

    def figure(self, titles: list[str] | None = None) -> Figure:
        """A strip: the image and one overlay per target, titled with the label and its
        probability; a VQA explanation also shows the question words' attributions."""
        pixels, size = self._display()
        attributions = self.info.get("word_attributions")
        words = None
        if attributions is not None:
            words = list(zip(self.info["question_words"], np.asarray(attributions[0]).tolist(), strict=True))
        heatmaps = np.stack([self.heatmap(t, size) for t in range(len(self))])
        return strip_figure(pixels, heatmaps, titles or self.titles(), suptitle=self.info.get("title"), word_scores=words)

    def guided_figure(self) -> Figure | None:
        """The Guided Grad-CAM strip, titled with the rule and where it was applied; None when
        it was not computed."""
        if self.guided_gradients is None:
            return None
        pixels, size = self._display()
        panels = [guided_image(self.guided_image(t, size)) for t in range(len(self))]
        heatmaps = np.stack([self.heatmap(t, size) for t in range(len(self))])
        title = f"Guided Grad-CAM; guided rule {GUIDED_RULE} on {describe(self.guided_activations)}"
        return strip_figure(pixels, heatmaps, self.titles(), suptitle=title, panels=panels)

    def attention_figure(self) -> Figure | None:
        """The model's own attention per target, or None when the model has none."""
        if self.attention_maps is None:
            return None
        pixels, size = self._display()
        attention = np.stack([self.attention_heatmap(t, size) for t in range(len(self))])
        return strip_figure(pixels, attention, self.titles(), suptitle="model attention")

    def plot(self, titles: list[str] | None = None) -> Figure:
        """Alias of :meth:`figure`, for notebooks."""
        return self.figure(titles)

    def save(self, directory: str | os.PathLike, stem: str) -> list[dict[str, str]]:
        """Write, per target, the map (.npy float32, original size), an overlay PNG and (when
        computed) a Guided Grad-CAM PNG, counterfactual map and the model's attention map
        (``_attention.npy``), plus a strip figure; contrastive maps (``STEM_contrast_*``) as
        .npy and overlay; every file is written atomically, one target at a time. Returns the
        paths written, one dict per target."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written: list[dict[str, str]] = []
        pixels = self.image.pixels
        for target, label in enumerate(self.labels):
            base = directory / f"{stem}_{target:02d}_{_slug(label)}"
            heatmap = self.heatmap(target)
            paths = {"heatmap": str(_save_npy(base.with_suffix(".npy"), heatmap))}
            paths["overlay"] = str(save_png(Path(f"{base}_overlay.png"), overlay(pixels, heatmap)))
            del heatmap
            if self.guided_gradients is not None:
                paths["guided"] = str(save_png(Path(f"{base}_guided.png"), guided_image(self.guided_image(target))))
            if self.counterfactual_maps is not None:
                counter = self.counterfactual_heatmap(target)
                paths["counterfactual"] = str(_save_npy(Path(f"{base}_counterfactual.npy"), counter))
            if self.attention_maps is not None:
                paths["attention"] = str(_save_npy(Path(f"{base}_attention.npy"), self.attention_heatmap(target)))
            written.append(paths)
        for index, label in enumerate(self.contrast_labels if self.contrast_maps is not None else []):
            base = directory / f"{stem}_contrast_{_slug(label)}"
            contrast = self.contrast_heatmap(index)
            _save_npy(base.with_suffix(".npy"), contrast)
            save_png(Path(f"{base}_overlay.png"), overlay(pixels, contrast))
        figures = [(f"{stem}_strip.png", self.figure)]
        if self.kind != "classify":
            figures += [(f"{stem}_guided.png", self.guided_figure), (f"{stem}_attention.png", self.attention_figure)]
        drawn = []
        for name, draw in figures:
            figure = draw()
            if figure is not None:
                _save_figure(directory / name, figure)
                drawn.append(name)
        if self.kind != "classify":
            title = self.info.get("title") or stem
            section = ReportSection(f"{self.model}: {title}", [(name, f"{self.method} on {self.layer}") for name in drawn])
            write_report(directory / f"{stem}.html", f"mmcam {self.kind}: {stem}", [section])
        return written

    def _repr_html_(self) -> str:
        """The interactive item view (hover a word, see its map) for Jupyter: self-contained."""
        from .viewer import explanation_html

        return explanation_html(self)

    def save_figure(self, path: str | os.PathLike) -> Path:
        """Write :meth:`figure` as a PNG, atomically."""
        return _save_figure(path, self.figure())


# ``guided_gradients`` reads through ``_get_guided``: Guided Backprop made on first use when the
# explanation was made lazily. Installed after @dataclass has read the field's default.
Explanation.guided_gradients = property(Explanation._get_guided, Explanation._set_guided)  # type: ignore[assignment]


def _numpy(maps: torch.Tensor) -> np.ndarray:
    return maps.numpy().astype(np.float32, copy=False)


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


