"""Gemma 3 with pan-and-scan crops (``do_pan_and_scan`` saved in its image processor): views and
prompts equal the processor's (asked for crops with the saved settings), teacher-forced scores
equal ``generate``'s, maps stitched from the crops at their places in the original image, on a
tiny random model saved offline (see ``vlm_paligemma_fixtures``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from conftest import assert_same_state, model_state
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from vlm_fixtures import SHAPES, llava_image
from vlm_paligemma_fixtures import saved_gemma3

QUESTION = "what color is the circle?"
CROPS = {"square": (0, 0), "wide": (1, 2), "tall": (2, 1)}  # 40x40: none; 40x64 and 64x40: two


@pytest.fixture(scope="module")
def captioner():
    return mmcam.load(f"hf:{saved_gemma3('pan-and-scan')}")


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(saved_gemma3("pan-and-scan"))


def _processed(processor, text: str, shape: str) -> dict:
    """The processor's inputs for the image of ``shape``, crops asked for with the saved settings
    (Gemma3Processor's call defaults to none, whatever its image processor saved)."""
    settings = processor.image_processor
    crops = {name: getattr(settings, name) for name in (
        "do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate",
    )}
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(
        conversation, images=[Image.open(llava_image(shape)).convert("RGB")], add_generation_prompt=True,
        tokenize=True, return_dict=True, return_tensors="pt", images_kwargs=crops,
    )


def _pixels(adapter, shape: str) -> torch.Tensor:
    return adapter.scorer.preprocess(np.array(Image.open(llava_image(shape)).convert("RGB")))[None]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_views_prompt_and_scores_are_the_processors(captioner, processor, shape: str) -> None:
    """The thumbnail and crops equal the processor's pixel values (up to resampling: mean
    difference < 0.003 on the [-1, 1] scale, 0.4 of a uint8 level), the prompt its ids (one
    image-token block per view), and teacher-forced scores ``generate``'s."""
    scorer = captioner.scorer
    inputs = _processed(processor, "Describe the image.", shape)
    pixels = _pixels(captioner, shape)
    rows, cols = CROPS[shape]
    assert pixels.shape[-2:] == (32 * max(rows, 1), 32 * max(cols, 1))
    views = scorer.views.crops.views(pixels)
    assert views.shape == inputs["pixel_values"].shape == (1 + rows * cols, 3, 32, 32)
    assert (views - inputs["pixel_values"]).abs().mean() < 3e-3
    assert scorer.prompt_ids(pixels) == tuple(inputs["input_ids"][0].tolist())
    assert int(inputs["token_type_ids"].sum()) == 4 * (1 + rows * cols)
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"], pixel_values=views,
            max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        prompt = inputs["input_ids"].shape[1]
        tokens = scorer.caption_of(generated.sequences[0, prompt:].tolist())
        assert captioner.caption_tokens(llava_image(shape)).ids[: len(tokens.ids)] == tokens.ids  # its own generate
        forced = scorer.score(pixels, torch.tensor([tokens.ids])).logits
    expected = torch.log_softmax(torch.stack(generated.logits[: len(tokens.ids)], dim=1), dim=-1)
    assert forced.shape == expected.shape and len(tokens.ids) >= 2
    torch.testing.assert_close(torch.log_softmax(forced, dim=-1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_maps_are_stitched_from_the_crops(captioner, shape: str) -> None:
    """Each layer's per-view grid, stitched over the crops (thumbnail left out): the tower's 8x8
    patches per view, the projector's and a language-model layer's 2x2 image tokens."""
    rows, cols = (max(side, 1) for side in CROPS[shape])
    height, width = SHAPES[shape]
    tower = captioner.explain(llava_image(shape), "a red circle", guided=False)
    assert tower.grid_maps.shape == (3, 8 * rows, 8 * cols) and tower.heatmap(0).shape == (height, width)
    for layer in ("model.multi_modal_projector", "model.language_model.layers.0"):
        adapter = mmcam.load(f"hf:{saved_gemma3('pan-and-scan')}", layer=layer)
        explanation = adapter.explain(llava_image(shape), "a red circle", guided=False)
        assert explanation.grid_maps.shape == (3, 2 * rows, 2 * cols)
        np.testing.assert_allclose(explanation.scores, tower.scores, atol=1e-5)


@pytest.mark.parametrize("shape", ["wide", "tall"])
def test_a_score_that_reads_one_crop_token_lights_up_its_place(captioner, shape: str) -> None:
    """The projector's tokens are zeroed but for token (0, 0) of the second crop (the right or
    bottom half): the tower's map lives in that token's 4x4 patches of that crop, the
    projector's in its one cell; the thumbnail's tokens, also zeroed, add nothing."""
    height, width = SHAPES[shape]
    keep = torch.zeros(3, 4, 1)  # (thumbnail + 2 crops, 2x2 tokens, 1)
    keep[2, 0] = 1.0
    projector = mmcam.load(f"hf:{saved_gemma3('pan-and-scan')}", layer="model.multi_modal_projector")
    for adapter, side in ((captioner, 8), (projector, 2)):
        norm = adapter.scorer.model.model.multi_modal_projector.mm_soft_emb_norm
        handle = norm.register_forward_hook(lambda _module, _args, output: output * keep)
        try:
            explanation = adapter.explain(llava_image(shape), "a red circle and a blue square", method="hirescam", guided=False, contrast=False)
        finally:
            handle.remove()
        maps = np.abs(explanation.grid_maps) + np.abs(explanation.counterfactual_maps)
        top, left = (0, side) if shape == "wide" else (side, 0)
        cell = side // 2  # the token's block of patches (the whole cell at the projector)
        block = (slice(None), slice(top, top + cell), slice(left, left + cell))
        assert maps[block].sum() > 0
        maps[block] = 0
        assert not maps.any()
        strongest = int(np.argmax(explanation.grid_maps[block].reshape(len(maps), -1).max(axis=1)))
        x, y = explanation.peak_xy(strongest)
        if shape == "wide":
            assert width / 2 <= x < 3 * width / 4 and y < height / 2
        else:
            assert x < width / 2 and height / 2 <= y < 3 * height / 4


def test_vqa_on_crops(processor) -> None:
    """Questions get the image's crops too: the answer's score is log p(answer + end) as
    ``generate`` scores it; a batch of two images equals each alone, at the tower and at a
    language-model layer; the model is unchanged."""
    answerer = mmcam.load(f"hf:{saved_gemma3('pan-and-scan')}?task=vqa")
    scorer = answerer.scorer
    pixels = _pixels(answerer, "wide")
    question = scorer.tokenize(QUESTION)
    inputs = _processed(processor, QUESTION, "wide")
    assert tuple(scorer.prompt_ids(pixels, scorer.collate([question]))[0].tolist()) == tuple(inputs["input_ids"][0].tolist())
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"], pixel_values=scorer.views.crops.views(pixels),
            max_new_tokens=2, min_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        answer = generated.sequences[0, inputs["input_ids"].shape[1] :].tolist()[:1]
        steps = torch.log_softmax(torch.cat(generated.logits), dim=-1)
        scores = scorer.score(pixels, scorer.collate([question]), [[tuple(answer)]])
    torch.testing.assert_close(scores[0, 0], steps[0, answer[0]] + steps[1, scorer.end_id], atol=1e-5, rtol=0)
    before = model_state(scorer.model)
    images, questions = [llava_image("wide"), llava_image("wide")], [QUESTION, "is there a red square?"]
    language = mmcam.load(f"hf:{saved_gemma3('pan-and-scan')}?task=vqa", layer="model.language_model.layers.0")
    for adapter, grid in ((answerer, (8, 16)), (language, (2, 4))):
        both = adapter.explain_batch(images, questions, [["red", "blue"], ["yes", "blue"]], guided=False)
        for n, text in enumerate(questions):
            alone = adapter.explain(images[n], text, ["blue"], guided=False)
            np.testing.assert_allclose(alone.grid_maps[0], both[n].grid_maps[1], atol=1e-5, rtol=0)
            np.testing.assert_allclose(alone.scores[0], both[n].scores[1], atol=1e-5)
        assert both[0].grid_maps.shape == (2, *grid) and np.abs(both[0].grid_maps).max() > 0
    generated = answerer.explain(llava_image("tall"), QUESTION, guided=False)
    assert generated.info["answer"] == generated.labels[0]
    assert_same_state(before, model_state(scorer.model))


def test_question_texts_are_kept_for_the_recent_questions_only() -> None:
    """The crop scorer rewrites a prompt from its question's text, kept per question by
    ``tokenize`` in a bounded map (a dataset of many questions does not grow it without end);
    ids it did not give are a clear error."""
    from mmcam.adapters.hf.gemma_scorers import _Recent
    from mmcam.errors import InputError

    recent = _Recent(2)
    for key in "abc":
        recent.put(key, key.upper())
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (None, "B", "C")
    answerer = mmcam.load(f"hf:{saved_gemma3('pan-and-scan')}?task=vqa")
    unknown = torch.tensor([[2, 3, 4]])
    with pytest.raises(InputError, match="did not give"):
        answerer.scorer.prompt_ids(_pixels(answerer, "wide"), unknown)


def test_crop_counts_follow_the_image_processor(captioner, processor) -> None:
    """(rows, cols) of :class:`PanAndScan` equal the image processor's own crop count over many
    sizes and aspect ratios (square, slightly and very elongated, too small to crop)."""
    crops = captioner.scorer.views.crops
    sizes = [(h, w) for h in (6, 10, 17, 30, 41, 64) for w in (5, 9, 12, 20, 33, 47, 70, 101)]
    counted = processor.image_processor([Image.new("RGB", (w, h)) for h, w in sizes])["num_crops"]
    for (height, width), count in zip(sizes, counted, strict=True):
        rows, cols = crops.crops(height, width)
        assert rows * cols == int(count), (height, width)
    assert {crops.crops(h, w) for h, w in sizes} >= {(0, 0), (1, 2), (2, 1), (1, 3), (1, 4), (3, 1)}
