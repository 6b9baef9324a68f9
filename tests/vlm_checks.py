"""Checks shared by the VLM captioner tests: every word at once equals each word alone (the model
left unchanged), and a score made to read one grid cell lights up that cell only."""

from __future__ import annotations

import numpy as np
import torch

from test_hf_llava import _hooks, _state


def check_words_at_once_equal_each_alone(captioner, image, caption: str) -> None:
    """All of ``caption``'s words explained in one pass equal each word explained alone (maps to
    1e-5 of the largest, scores to 1e-5); weights, hooks and eval mode are as before."""
    scorer = captioner.scorer
    model = scorer.model
    pixels = scorer.preprocess(np.array(image_pixels(image)))[None]
    with torch.no_grad():  # transformers installs its hidden-state recording hooks on a first forward
        scorer.score(pixels, torch.tensor([scorer.tokenize(caption).ids]))
    before, hooks = _state(model), _hooks(model)
    together = captioner.explain(image, caption, guided=False, contrast=False)
    largest = np.abs(together.grid_maps).max()
    assert together.labels == caption.split() and largest > 0
    for index in range(len(together.labels)):
        alone = captioner.explain(image, caption, words=[index], guided=False, contrast=False)
        np.testing.assert_allclose(alone.grid_maps[0], together.grid_maps[index], atol=1e-5 * largest, rtol=0)
        np.testing.assert_allclose(alone.scores[0], together.scores[index], atol=1e-5)
    after = _state(model)
    assert all(torch.equal(before[name], after[name]) for name in before) and _hooks(model) == hooks
    assert not model.training


def check_one_cell_lit(explanation, cell: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]) -> None:
    """HiResCAM (and its counterfactual) of a score that reads grid ``cell`` only: nonzero there
    for every word, 0 elsewhere, and the strongest word's full-size map (``size`` (H, W)) peaks
    inside that cell's place in the original image."""
    row, column = cell
    both = np.abs(explanation.grid_maps) + np.abs(explanation.counterfactual_maps)
    assert (both[:, row, column] > 0).all()
    both[:, row, column] = 0
    assert not both.any()
    strongest = int(np.argmax(explanation.grid_maps[:, row, column]))
    assert explanation.grid_maps[strongest, row, column] > 0
    x, y = explanation.peak_xy(strongest)
    height, width = size
    assert column * width / grid[1] <= x < (column + 1) * width / grid[1]
    assert row * height / grid[0] <= y < (row + 1) * height / grid[0]


def image_pixels(image) -> np.ndarray:
    """RGB pixels (H, W, 3) of an image file."""
    from PIL import Image

    return np.array(Image.open(image).convert("RGB"))


def check_generated_batch_equals_single(captioner, images) -> None:
    """Captions generated for a minibatch of images (one ``generate`` call) and their maps equal
    each image's own :meth:`explain`."""
    together = captioner.explain_batch(images, guided=False, contrast=False)
    for image, batched in zip(images, together, strict=True):
        alone = captioner.explain(image, guided=False, contrast=False)
        assert batched.labels == alone.labels and batched.labels
        largest = np.abs(alone.grid_maps).max()
        np.testing.assert_allclose(batched.grid_maps, alone.grid_maps, atol=1e-5 * largest, rtol=0)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)
