"""The generated scenes: determinism, captions that match the drawn objects, masks and boxes."""

from __future__ import annotations

import numpy as np
import pytest

from mmcam.data.scenes import (
    COLORS,
    SHAPES,
    Scene,
    iter_split,
    make_split,
    render_scene,
    word_kind,
)

N_SCENES = 60


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return make_split("test", N_SCENES)


def test_same_split_twice_is_identical(scenes: list[Scene]) -> None:
    again = make_split("test", N_SCENES)
    for first, second in zip(scenes, again, strict=True):
        assert np.array_equal(first.image, second.image)
        assert first.caption == second.caption
        assert [obj.box for obj in first.objects] == [obj.box for obj in second.objects]
        for a, b in zip(first.objects, second.objects, strict=True):
            assert np.array_equal(a.mask, b.mask)


def test_shorter_split_is_a_prefix_and_iter_split_agrees(scenes: list[Scene]) -> None:
    prefix = make_split("test", 5)
    streamed = list(iter_split("test", 5))
    for scene, short, lazy in zip(scenes[:5], prefix, streamed, strict=True):
        assert np.array_equal(scene.image, short.image) and np.array_equal(scene.image, lazy.image)


def test_splits_differ(scenes: list[Scene]) -> None:
    train, val = make_split("train", N_SCENES), make_split("val", N_SCENES)
    for other in (train, val):
        assert not any(np.array_equal(a.image, b.image) for a, b in zip(scenes, other))
    assert [s.caption for s in train] != [s.caption for s in val]


def test_image_format(scenes: list[Scene]) -> None:
    for scene in scenes:
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8


def test_render_scene_honours_size() -> None:
    scene = render_scene(np.random.default_rng(7), size=64)
    assert scene.image.shape == (64, 64, 3)
    assert all(obj.mask.shape == (64, 64) for obj in scene.objects)


def test_caption_grammar_and_left_to_right_order(scenes: list[Scene]) -> None:
    for scene in scenes:
        assert 1 <= len(scene.objects) <= 3
        expected = " and ".join(f"a {obj.color} {obj.shape}" for obj in scene.objects)
        assert scene.caption == expected
        assert scene.words == tuple(expected.split())
        centres = [(obj.box[0] + obj.box[2]) / 2 for obj in scene.objects]
        assert centres == sorted(centres)
        assert len(set(centres)) == len(centres)


def test_split_covers_every_object_count_colour_and_shape() -> None:
    scenes = make_split("train", 300)
    assert {len(scene.objects) for scene in scenes} == {1, 2, 3}
    assert {obj.color for scene in scenes for obj in scene.objects} == set(COLORS)
    assert {obj.shape for scene in scenes for obj in scene.objects} == set(SHAPES)


def test_word_objects_point_at_the_named_object(scenes: list[Scene]) -> None:
    for scene in scenes:
        assert len(scene.word_objects) == len(scene.words)
        for word, index in zip(scene.words, scene.word_objects, strict=True):
            kind = word_kind(word)
            if kind == "other":
                assert word in ("a", "and") and index is None
            else:
                assert index is not None
                obj = scene.objects[index]
                assert (obj.color if kind == "color" else obj.shape) == word
        # Every object is named by exactly one colour word and one shape word.
        named = [index for index in scene.word_objects if index is not None]
        assert sorted(named) == sorted(list(range(len(scene.objects))) * 2)


def test_word_kind() -> None:
    assert [word_kind(w) for w in ("red", "teal", "circle", "triangle", "a", "and", "dog")] == [
        "color", "color", "shape", "shape", "other", "other", "other",
    ]


def test_masks_fill_their_boxes_and_do_not_overlap(scenes: list[Scene]) -> None:
    for scene in scenes:
        union = np.zeros((128, 128), dtype=int)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            rows, cols = np.nonzero(obj.mask)
            # The box is the mask's tight inclusive extent.
            assert (cols.min(), rows.min(), cols.max(), rows.max()) == (x0, y0, x1, y1)
            assert 16 - 2 <= max(x1 - x0 + 1, y1 - y0 + 1) <= 48
            union += obj.mask
        assert union.max() == 1


def test_boxes_do_not_touch(scenes: list[Scene]) -> None:
    for scene in scenes:
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                gap_x = max(b.box[0] - a.box[2], a.box[0] - b.box[2]) - 1
                gap_y = max(b.box[1] - a.box[3], a.box[1] - b.box[3]) - 1
                assert max(gap_x, gap_y) >= 2


def test_no_two_objects_share_colour_and_shape(scenes: list[Scene]) -> None:
    for scene in scenes:
        kinds = [(obj.color, obj.shape) for obj in scene.objects]
        assert len(set(kinds)) == len(kinds)


def test_background_and_object_colours(scenes: list[Scene]) -> None:
    for scene in scenes:
        objects = np.zeros((128, 128), dtype=bool)
        for obj in scene.objects:
            # Grow each mask by two pixels so anti-aliased edges count as object.
            x0, y0, x1, y1 = obj.box
            objects[max(0, y0 - 2) : y1 + 3, max(0, x0 - 2) : x1 + 3] = True
            # Pixels well inside the shape are the palette colour within the jitter.
            inside = obj.mask & np.roll(obj.mask, 2, 0) & np.roll(obj.mask, -2, 0)
            inside &= np.roll(obj.mask, 2, 1) & np.roll(obj.mask, -2, 1)
            difference = scene.image[inside].astype(int) - np.array(COLORS[obj.color])
            assert np.abs(difference).max() <= 12
        background = scene.image[~objects]
        assert background.min() >= 230
        # One background colour per scene.
        assert (background == background[0]).all()


def test_unknown_split_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'.*train, val, test"):
        make_split("dev", 3)
    with pytest.raises(ValueError, match="unknown split"):
        iter_split("dev", 3)
