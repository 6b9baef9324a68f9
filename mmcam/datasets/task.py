"""What a dataset run explains: the task, the model and the per-item options (picklable, so
that DataLoader workers, torchrun ranks and Ray actors each rebuild the same adapter)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError

KINDS = ("caption", "vqa")
DEFAULT_MODELS = {"caption": "shapes-captioner", "vqa": "easy-vqa"}


@dataclass(frozen=True)
class DatasetTask:
    """``kind`` (caption or vqa), the model as ``mmcam.load`` takes it, the method (None: the
    model's default) and the options of ``explain_batch``: caption ``words``, ``score``,
    ``beam``; VQA ``answers`` (for every item without its own) and ``top``."""

    kind: str
    model: str | None = None
    weights: str | None = None
    layer: str | None = None
    method: str | None = None
    words: tuple[str, ...] | None = None
    score: str = "logprob"
    beam: int = 1
    answers: tuple[str, ...] | None = None
    top: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown task {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.model is None:
            object.__setattr__(self, "model", DEFAULT_MODELS[self.kind])

    @property
    def fields(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) fields of an items-file line."""
        return (("image",), ("caption",)) if self.kind == "caption" else (("image", "question"), ("answer",))

    def settings(self) -> dict[str, Any]:
        """What shapes the rows, as JSON values: a resumed run must have the same."""
        from .. import __version__

        values = {key: value for key, value in asdict(self).items() if key != "device"}
        return {"mmcam": __version__, **{key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}}

    def load_adapter(self):
        """The adapter of ``model`` on ``device``; a model of another kind is an input error."""
        from ..registry import load

        adapter = load(self.model, weights=self.weights, layer=self.layer)
        if getattr(adapter, "kind", None) != self.kind:
            raise InputError(f"model {self.model!r} is a {adapter.kind} model; use 'mmcam {adapter.kind}'")
        if getattr(adapter.scorer.model, "hf_device_map", None) is None:
            adapter.scorer.model.to(self.device)
        elif self.device != "cpu":
            raise InputError(f"model {self.model!r} is placed by its device_map; leave out --device {self.device}")
        return adapter
