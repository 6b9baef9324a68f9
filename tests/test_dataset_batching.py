"""Image batching: N images with their own captions (different lengths, padded) or questions in
ONE forward and ONE batched backward pass give each image what its own ``explain`` gives."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import mmcam
from hf_fixtures import adapter as hf_adapter
from hf_fixtures import image_file, one_thread  # noqa: F401 (autouse fixture)
from mmcam.data.scenes import make_split
from mmcam.explanation import Explanation

TOLERANCE = 1e-5


def _assert_same(batched: Explanation, alone: Explanation) -> None:
    assert batched.labels == alone.labels and batched.indices == alone.indices
    assert batched.contrast_labels == alone.contrast_labels
    for name in ("grid_maps", "scores", "counterfactual_maps", "contrast_maps", "attention_maps", "guided_gradients"):
        mine, theirs = getattr(batched, name), getattr(alone, name)
        assert (mine is None) == (theirs is None), name
        if theirs is not None:
            scale = max(1.0, float(np.abs(theirs).max()))
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=TOLERANCE * scale, err_msg=name)
    for key in ("logprobs", "contrast_scores", "probabilities", "word_attributions"):
        if key in alone.info:
            np.testing.assert_allclose(batched.info[key], alone.info[key], rtol=0, atol=TOLERANCE, err_msg=key)
    for key in ("caption", "question", "answer"):
        assert batched.info.get(key) == alone.info.get(key)


@pytest.fixture(scope="module")
def scenes():
    return make_split("test", 4)


def test_shipped_captioner_batch_equals_each_image_alone(scenes) -> None:
    captioner = mmcam.load("shapes-captioner")
    # different lengths (3, 7 and generated words), generated captions (batched greedy) beside given ones
    captions = ["a red circle", "a blue rectangle and a green triangle", None, None]
    options = {"whole_caption": True, "guided": True, "contrast": True}
    batched = captioner.explain_batch([scene.image for scene in scenes], captions, **options)
    lengths = {len(explanation.labels) for explanation in batched}
    assert len(lengths) > 1  # the captions really were padded
    for scene, caption, explanation in zip(scenes, captions, batched, strict=True):
        alone = captioner.explain(scene.image, caption, **options)
        _assert_same(explanation, alone)
        assert explanation.labels[-1] == "<caption>"
        # a padded image's score is its own caption's log-prob, not 0 and not another image's
        assert explanation.scores[-1] == pytest.approx(sum(explanation.info["logprobs"][:-1]), abs=1e-4)


def test_a_neighbour_does_not_change_an_images_maps(scenes) -> None:
    captioner = mmcam.load("shapes-captioner")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # padded cells are zero by design: no flat-gradient warning
        first = captioner.explain_batch([scenes[0].image, scenes[1].image], ["a red circle", "a blue rectangle and a green triangle"])[0]
    other = captioner.explain_batch([scenes[0].image, scenes[2].image], ["a red circle", "a yellow triangle and a red rectangle"])[0]
    np.testing.assert_allclose(first.grid_maps, other.grid_maps, rtol=0, atol=1e-6)
    assert first.grid_maps.max() > 0


def test_shipped_vqa_batch_equals_each_item_alone(scenes) -> None:
    vqa = mmcam.load("easy-vqa")
    images = [scene.image for scene in scenes[:3]]
    questions = ["what color is the shape?", "what shape is in the image?", "is there a circle?"]
    batched = vqa.explain_batch(images, questions, top=2)
    for image, question, explanation in zip(images, questions, batched, strict=True):
        _assert_same(explanation, vqa.explain(image, question, top=2))


@pytest.mark.parametrize("family", ["blip", "git", "ved-convnext-gpt2", "ved-vit-bert"])
def test_hf_captioner_batch_equals_each_image_alone(family) -> None:
    captioner = hf_adapter(family)
    image = image_file()
    flipped = np.ascontiguousarray(np.asarray(mmcam.io.load_image(image).pixels)[::-1])
    captions = ["a red triangle and a green circle", "a circle", None, None]
    pictures = [image, flipped, image, flipped]
    batched = captioner.explain_batch(pictures, captions, guided=False)
    assert len(batched[0].labels) != len(batched[1].labels)
    for picture, caption, explanation in zip(pictures, captions, batched, strict=True):
        _assert_same(explanation, captioner.explain(picture, caption, guided=False))


def test_pad_id_is_the_tokenizers() -> None:
    blip = hf_adapter("blip")
    assert blip.scorer.pad_id == blip.scorer.tokenizer.pad_token_id
    assert mmcam.load("shapes-captioner").scorer.pad_id == 0


def test_wrong_number_of_captions_is_an_input_error(scenes) -> None:
    with pytest.raises(mmcam.errors.InputError, match="2 images but 1 captions"):
        mmcam.load("shapes-captioner").explain_batch([scenes[0].image, scenes[1].image], ["a red circle"])


def test_batched_gradients_leave_parameters_untouched(scenes) -> None:
    captioner = mmcam.load("shapes-captioner")
    captioner.explain_batch([scene.image for scene in scenes[:2]], ["a red circle", None])
    assert all(parameter.grad is None for parameter in captioner.scorer.model.parameters())
    assert torch.is_grad_enabled()


def test_map_tensors_reaches_every_tensor_of_a_record(scenes) -> None:
    """A record made on a GPU comes back to the CPU through map_tensors: every tensor in it
    (the output's dataclass and the dicts included) is mapped, the rest kept."""
    from mmcam.core.gradcam import map_tensors

    run = mmcam.load("easy-vqa").run([scenes[0].image], ["what color is the shape?"], top=2)
    mapped = map_tensors(run.record, lambda tensor: tensor.double())
    assert mapped.scores.dtype == torch.float64 and mapped.gradients.dtype == torch.float64
    assert all(value.dtype == torch.float64 for value in mapped.extra_gradients.values())
    assert mapped.extra_gradients.keys() == run.record.extra_gradients.keys()
    assert mapped.input_size == run.record.input_size and mapped.layout == run.record.layout
    np.testing.assert_array_equal(mapped.scores.numpy(), run.record.scores.double().numpy())
