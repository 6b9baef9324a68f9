"""The evaluation sets: generated scenes for the captioner, easy-VQA's test split for VQA."""

from __future__ import annotations

import numpy as np

from ..data.scenes import COLORS, SHAPES, Scene, make_split
from .answers import VQAItem

DEFAULT_SCENES = 1000


def captioner_scenes(limit: int | None = None) -> list[Scene]:
    """The generated test split (``limit`` scenes, default 1000)."""
    return make_split("test", limit or DEFAULT_SCENES)


def easy_vqa_items(vocab: list[str], limit: int | None = None, color_or_shape_only: bool = False) -> list[VQAItem]:
    """easy-VQA test questions (in the package's order) as :class:`VQAItem`s; with
    ``color_or_shape_only`` only those whose answer is a colour or a shape (the ones whose map
    should land on the shape)."""
    import easy_vqa

    from mmcam.models.easy_vqa_data import load_easy_vqa_split

    split = load_easy_vqa_split("test", vocab)
    answers = easy_vqa.get_answers()
    pixels = (split.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    wanted = set(COLORS) | set(SHAPES)
    items = []
    for index, question in enumerate(split.questions):
        answer = answers[int(split.answer_indices[index])]
        if color_or_shape_only and answer not in wanted:
            continue
        items.append(VQAItem(pixels[int(split.question_image_index[index])], question, answer))
        if limit is not None and len(items) >= limit:
            break
    return items
