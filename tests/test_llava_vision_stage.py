"""Stage-1 targets of shapes-llava's training (models/llava_vision_stage.py): per-patch labels,
outlines and left-to-right slots from masks, and easy-VQA objects segmented from their background."""

from __future__ import annotations

import easy_vqa
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmcam.data.scenes import COLORS, SHAPES
from models.llava_vision_stage import easy_vqa_object, object_labels


def _drawn(shape: str, color: str) -> np.ndarray:
    """A 64x64 easy-VQA-like image: one shape in a 30-px cell on a plain light background."""
    image = Image.new("RGB", (64, 64), (240, 235, 230))
    draw, box = ImageDraw.Draw(image), (10, 20, 39, 49)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "triangle":
        draw.polygon([(24.5, 20), (39, 49), (10, 49)], fill=COLORS[color])
    else:
        draw.rectangle((10, 26, 39, 43), fill=COLORS[color])
    return np.asarray(image)


@pytest.mark.parametrize(("shape", "color"), [("circle", "teal"), ("triangle", "yellow"), ("rectangle", "black")])
def test_easy_vqa_object_reads_shape_and_colour_of_a_drawn_object(shape: str, color: str) -> None:
    mask, found_color, found_shape = easy_vqa_object(_drawn(shape, color))
    assert (found_shape, found_color) == (shape, color)
    assert mask[35, 25] and not mask[2, 2]


def test_easy_vqa_object_agrees_with_the_answers_about_real_train_images() -> None:
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    named: dict[int, set[str]] = {}
    for answer, image_id in zip(answers, image_ids, strict=True):
        if image_id < 30 and (answer in COLORS or answer in SHAPES):
            named.setdefault(image_id, set()).add(answer)
    for image_id, words in named.items():
        _, color, shape = easy_vqa_object(np.asarray(Image.open(paths[image_id]).convert("RGB")))
        assert words <= {color, shape}, image_id


def test_object_labels_by_hand_on_a_2x2_grid() -> None:
    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[0, 0:16, 0:8] = True  # half of patch 0
    masks[1, 20:24, 16:32] = True  # 64 px of patch 3: a quarter, just enough for a label
    masks[2, 0:3, 16:32] = True  # 48 px of patch 1: too little, the patch stays background
    colors, shapes = ["red", "blue", "green"], ["circle", "triangle", "rectangle"]
    patches, outline, slots = object_labels(list(masks), colors, shapes, 16)
    color_ids, shape_ids = [list(COLORS).index(c) for c in colors], [SHAPES.index(s) for s in shapes]
    np.testing.assert_array_equal(patches, [[color_ids[0], -1, -1, color_ids[1]],
                                            [shape_ids[0], -1, -1, shape_ids[1]]])
    # Outlines: 4x4 sub-blocks of 4x4 px, row by row, the covered fraction of each.
    np.testing.assert_array_equal(outline[0], [1, 1, 0, 0] * 4)
    np.testing.assert_array_equal(outline[1], [0.75] * 4 + [0] * 12)
    np.testing.assert_array_equal(outline[2], np.zeros(16))
    np.testing.assert_array_equal(outline[3], [0] * 4 + [1] * 4 + [0] * 8)
    np.testing.assert_array_equal(slots, [color_ids, shape_ids])
