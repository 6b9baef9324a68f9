"""Your evaluation data (``mmcam eval ... --data FILE.jsonl``): one JSON object per line.

Captioners: ``{"image": P}`` (the model's own caption is explained) or ``{"image": P, "caption":
T}``; VQA models: ``{"image": P, "question": Q}`` (the predicted answer) or with ``"answer": A``;
classifiers: ``{"image": P}`` (the predicted class). Image paths are relative to the file's
folder (or http(s) URLs). Grounding and localization need ground truth, boxes in the original
image's pixels (inclusive, x right, y down)::

    {"image": "a.jpg", "caption": "a red circle", "boxes": [{"index": 1, "word": "red", "box": [4, 6, 20, 22]}]}
    {"image": "a.jpg", "question": "what color is it?", "answer": "red", "boxes": [{"box": [4, 6, 20, 22]}]}

``index`` is the word's 0-based position in the caption as mmcam splits it (the words of
``mmcam caption --caption T``), ``word`` that word, checked against it. A VQA box belongs to the
answer (``word``, if given, must be the answer). A word with several boxes (``"two circles"``)
is grounded on their union. Every line is checked before any work: a bad one is one
:class:`~mmcam.errors.InputError` naming the file, the line and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import load_image, url_path

Box = tuple[int, int, int, int]
TEXT_KEYS = {"caption": ("caption",), "vqa": ("question", "answer"), "classify": ()}


@dataclass(frozen=True)
class GroundTruthBox:
    """A box (x0, y0, x1, y1) around what caption word ``index`` (``word``) names; for VQA the
    answer's box (index 0)."""

    index: int
    word: str | None
    box: Box


@dataclass(frozen=True)
class DataItem:
    """One line of a data file: where it is (``line``, 1-based), the image (a path resolved
    against the file's folder, or a URL), the caption or question (None: the model's own
    caption), the answer (VQA) and the ground-truth boxes."""

    line: int
    image: str
    text: str | None = None
    answer: str | None = None
    boxes: tuple[GroundTruthBox, ...] = ()


def read_items(path: str | Path, kind: str, *, need_boxes: bool = False) -> list[DataItem]:
    """Read and check every line of a data file for a model of ``kind`` (``"caption"``,
    ``"vqa"`` or ``"classify"``); ``need_boxes``: grounding and localization (captions need
    their caption, VQA items their answer). Blank lines are skipped."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"data file not found: {path}")
    if kind not in TEXT_KEYS:
        raise InputError(f"cannot evaluate a model of kind {kind!r} on a data file; kinds: {', '.join(TEXT_KEYS)}")
    if need_boxes and kind == "classify":
        raise InputError("grounding a classifier: use 'mmcam eval localization --boxes FILE' (one class label per box)")
    items = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                items.append(_item(json.loads(line), number, source.parent, kind, need_boxes))
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not a JSON object ({error.msg})") from None
            except _LineError as error:
                raise InputError(f"{path}:{number}: {error}") from None
    if not items:
        raise InputError(f"{path} holds no items (one JSON object per line)")
    return items


class _LineError(ValueError):
    """A problem with one line; :func:`read_items` adds the file and line number."""


def _item(record: Any, number: int, folder: Path, kind: str, need_boxes: bool) -> DataItem:
    if not isinstance(record, dict):
        raise _LineError(f"expected a JSON object, got {type(record).__name__}")
    accepted = ("image", *TEXT_KEYS[kind], *(("boxes",) if kind != "classify" else ()))
    unknown = [key for key in record if key not in accepted]
    if unknown:
        raise _LineError(f"unknown key {unknown[0]!r} for a {kind} model; accepted: {', '.join(accepted)}")
    image = _text(record, "image", required=True)
    if url_path(image) is None:
        image = str(folder / image)
        if not Path(image).is_file():
            raise _LineError(f"image not found: {image}")
    if kind == "caption":
        text, answer = _text(record, "caption", required=need_boxes), None
    elif kind == "vqa":
        text, answer = _text(record, "question", required=True), _text(record, "answer", required=need_boxes)
    else:
        text, answer = None, None
    if need_boxes and "boxes" not in record:
        raise _LineError('no "boxes": grounding and localization need ground-truth boxes')
    boxes = tuple(_box(entry, k, kind, answer) for k, entry in enumerate(_list(record.get("boxes", []), need_boxes)))
    return DataItem(number, image, text, answer, boxes)


def _text(record: dict, key: str, *, required: bool) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise _LineError(f'no "{key}"')
        return None
    if not isinstance(value, str) or not value.strip():
        raise _LineError(f'"{key}" must be a non-empty string, got {json.dumps(value)}')
    return value


def _list(value: Any, need_boxes: bool) -> list:
    if not isinstance(value, list) or (need_boxes and not value):
        raise _LineError(f'"boxes" must be a non-empty list of {{"index", "word", "box"}}, got {json.dumps(value)}')
    return value


def _box(entry: Any, position: int, kind: str, answer: str | None) -> GroundTruthBox:
    where = f"boxes[{position}]"
    if not isinstance(entry, dict) or "box" not in entry:
        raise _LineError(f'{where} must be an object with "box": [x0, y0, x1, y1], got {json.dumps(entry)}')
    box = entry["box"]
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and v >= 0 for v in box)
    ):
        raise _LineError(f"{where}: box must be 4 non-negative integer pixels [x0, y0, x1, y1], got {json.dumps(box)}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x0 > x1 or y0 > y1:
        raise _LineError(f"{where}: box {json.dumps(box)} has x0 > x1 or y0 > y1 (inclusive pixels: [x0, y0, x1, y1])")
    word, index = entry.get("word"), entry.get("index")
    if word is not None and not isinstance(word, str):
        raise _LineError(f'{where}: "word" must be a string, got {json.dumps(word)}')
    if kind == "caption":
        if not isinstance(index, int) or isinstance(index, bool) or index < 0 or word is None:
            raise _LineError(f'{where}: a caption box needs "index" (the word\'s 0-based position) and "word"')
    else:
        if index not in (None, 0):
            raise _LineError(f'{where}: a VQA box belongs to the answer: "index" must be 0 or left out, got {json.dumps(index)}')
        if word is not None and answer is not None and word.strip().lower() != answer.strip().lower():
            raise _LineError(f"{where}: word {word!r} is not the answer {answer!r} (a VQA box belongs to the answer)")
        index = 0
    return GroundTruthBox(index, word, (x0, y0, x1, y1))


def check_against_model(items: list[DataItem], adapter: Any, path: str | Path) -> None:
    """Checks that need the model, still before any work: each box's word is the caption's word
    at its index as the adapter splits the caption, each answer is one the model can score, and
    each box lies inside its image."""
    for item in items:
        try:
            if adapter.kind == "caption" and item.text is not None:
                words = adapter.caption_tokens(None, item.text).words
                for k, box in enumerate(item.boxes):
                    _check_word(words, box, k)
            if adapter.kind == "vqa" and item.answer is not None and getattr(adapter, "answers", None):
                adapter.answer_index(item.answer)
            if item.boxes and url_path(item.image) is None:
                height, width = load_image(item.image).size
                for k, box in enumerate(item.boxes):
                    if box.box[2] >= width or box.box[3] >= height:
                        raise _LineError(f"boxes[{k}]: box {list(box.box)} reaches outside the {width}x{height} image")
        except (InputError, _LineError) as error:
            raise InputError(f"{path}:{item.line}: {error}") from None


def _check_word(words: tuple[str, ...], box: GroundTruthBox, position: int) -> None:
    if box.index >= len(words):
        raise _LineError(
            f"boxes[{position}]: index {box.index} is past the caption's {len(words)} words ({' '.join(f'{k}:{w}' for k, w in enumerate(words))})"
        )
    if words[box.index].lower() != (box.word or "").strip().lower():
        raise _LineError(
            f"boxes[{position}]: word {box.word!r} is not word {box.index} of the caption, which is {words[box.index]!r} "
            f"(words: {' '.join(f'{k}:{w}' for k, w in enumerate(words))})"
        )
