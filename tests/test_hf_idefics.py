"""Idefics3 and SmolVLM through ``mmcam.load("hf:FOLDER")``: the image processor's own tiles and
prompt, teacher-forced scores equal to ``generate``'s, every word from one pass, maps stitched
from the tiles onto the whole image, on tiny random checkpoints saved offline (see
``vlm_idefics_fixtures``); square, wide and tall images make 3x3, 2x3 and 3x2 tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.cli import main
from mmcam.errors import InputError
from reliability_support import assert_unchanged, full_state
from test_hf_cli import CAPTION_KEYS, VQA_KEYS
from vlm_fixtures import SHAPES, llava_image
from vlm_idefics_fixtures import CLASSES, IMAGE_SEQ_LEN, PATCH, SCALE, TILE, saved_idefics
from vlm_checks import check_words_at_once_equal_each_alone

CAPTION = "a red circle and a blue square"
QUESTION = "what color is the circle?"
FAMILIES = list(CLASSES)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def captioner(family):
    return mmcam.load(f"hf:{saved_idefics(family)}")


@pytest.fixture(scope="module")
def answerer(family):
    return mmcam.load(f"hf:{saved_idefics(family)}?task=vqa")


@pytest.fixture(scope="module")
def processor(family):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(saved_idefics(family))


def _image(shape: str) -> Image.Image:
    return Image.open(llava_image(shape)).convert("RGB")


def _pixels(adapter, shape: str) -> torch.Tensor:
    return adapter.scorer.preprocess(np.array(_image(shape)))[None]


def _rendered(processor, text: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def _rows_cols(processor, shape: str) -> tuple[int, int]:
    info = processor.image_processor(images=_image(shape), return_row_col_info=True)
    return info["rows"][0][0], info["cols"][0][0]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_pixels_and_prompt_are_the_processors_own(captioner, answerer, processor, shape: str) -> None:
    """The tiles equal the processor's pixel values (1e-5: the same uint8 resizes, then cuts);
    the global view, resized from float values where the processor resizes and rounds uint8
    ones, within one uint8 level; the prompt equals the processor's ids token for token."""
    rendered = _rendered(processor, "Describe the image.")
    expected = processor(images=_image(shape), text=rendered, return_tensors="pt")
    pixels = _pixels(captioner, shape)
    rows, cols = _rows_cols(processor, shape)
    assert pixels.shape == (1, 3, rows * TILE, cols * TILE) and rows * cols > 1
    inputs = captioner.scorer.views.inputs(pixels)
    assert inputs["pixel_values"].shape == expected["pixel_values"].shape == (1, rows * cols + 1, 3, TILE, TILE)
    torch.testing.assert_close(inputs["pixel_values"][:, :-1], expected["pixel_values"][:, :-1], atol=1e-5, rtol=0)
    level = 1 / (255 * 0.5)  # one uint8 level after normalising with std 0.5
    assert (inputs["pixel_values"][:, -1] - expected["pixel_values"][:, -1]).abs().max() <= level
    assert torch.equal(inputs["pixel_attention_mask"], expected["pixel_attention_mask"])
    prompt = captioner.scorer.prompt_ids(pixels)
    assert prompt == tuple(expected["input_ids"][0].tolist())
    image_id = processor.image_token_id
    assert prompt.count(image_id) == (rows * cols + 1) * IMAGE_SEQ_LEN
    question = answerer.scorer.tokenize(QUESTION)
    asked = processor(images=_image(shape), text=_rendered(processor, QUESTION))["input_ids"][0]
    expanded = answerer.scorer.prompt_ids(pixels, answerer.scorer.collate([question]))
    assert tuple(expanded[0].tolist()) == tuple(asked) and question.words == ("what", "color", "is", "the", "circle")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_teacher_forced_scores_equal_generate(captioner, shape: str) -> None:
    scorer = captioner.scorer
    pixels = _pixels(captioner, shape)
    prefix = scorer.prompt_ids(pixels)
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=torch.tensor([prefix]), **scorer.views.inputs(pixels), max_new_tokens=scorer.max_new_tokens,
            do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        tokens = scorer.caption_after(prefix, generated.sequences[0].tolist())
        assert tokens == captioner.caption_tokens(llava_image(shape))
        forced = scorer.score(pixels, torch.tensor([tokens.ids])).logits
    expected = torch.log_softmax(torch.stack(generated.logits[: len(tokens.ids)], dim=1), dim=-1)
    assert forced.shape == expected.shape and len(tokens.ids) >= 1
    torch.testing.assert_close(torch.log_softmax(forced, dim=-1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_maps_are_the_tiles_stitched_over_the_whole_image(family, captioner, processor, shape: str) -> None:
    """The vision tower's map is the processor's rows x cols tiles of (TILE / PATCH)^2 patches;
    the connector's, of (TILE / PATCH / scale_factor)^2 image tokens; both stretch onto the
    original image."""
    rows, cols = _rows_cols(processor, shape)
    explanation = captioner.explain(llava_image(shape), CAPTION, guided=False, contrast=False)
    side = TILE // PATCH
    assert captioner.layer_name == "model.vision_model.post_layernorm"
    assert explanation.grid_maps.shape == (7, rows * side, cols * side)
    assert explanation.heatmap(1).shape == SHAPES[shape]
    stitched = f"tiles {rows}x{cols} of {side}x{side} tokens stitched to {rows * side}x{cols * side}, global view left out"
    assert captioner.scorer.reshape.describe() == stitched
    if shape == "wide":
        connector = mmcam.load(f"hf:{saved_idefics(family)}", layer="model.connector")
        mapped = connector.explain(llava_image(shape), CAPTION, guided=False, contrast=False)
        assert mapped.grid_maps.shape == (7, rows * side // SCALE, cols * side // SCALE)


def test_every_word_at_once_equals_each_word_alone(captioner) -> None:
    check_words_at_once_equal_each_alone(captioner, llava_image("wide"), CAPTION)
    before = full_state(captioner.scorer.model)
    guided = captioner.explain(llava_image("wide"), "a red circle")
    assert guided.guided_gradients.shape == (3, 3, 32, 48) and np.abs(guided.guided_gradients).max() > 0
    assert_unchanged(before, full_state(captioner.scorer.model))


@pytest.mark.parametrize(("shape", "layer"), [("wide", "tower"), ("tall", "tower"), ("wide", "connector")])
def test_a_score_that_reads_one_patch_lights_up_that_place(family, captioner, shape: str, layer: str) -> None:
    """The connector's output is zeroed for every image token but token (0, 1) of tile (1, 1) (of
    2x3 or 3x2 tiles). At the vision tower, the words' scores then depend on that token's 2x2
    patches only (the pixel shuffle's block: rows 0-1, columns 2-3 of the tile's 4x4 patches);
    at the connector, on that token (the tile's 2x2 grid, cell (0, 1)). HiResCAM is 0 at every
    other cell of the stitched grid, and the full-size map peaks at that place in the original
    image."""
    adapter = captioner if layer == "tower" else mmcam.load(f"hf:{saved_idefics(family)}", layer="model.connector")
    model = adapter.scorer.model
    rows, cols = (2, 3) if shape == "wide" else (3, 2)
    keep = torch.zeros(rows * cols + 1, IMAGE_SEQ_LEN, 1)
    keep[1 * cols + 1, 1] = 1.0
    handle = model.model.connector.register_forward_hook(lambda module, args, output: output * keep)
    try:
        explanation = adapter.explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        handle.remove()
    side = TILE // PATCH // (1 if layer == "tower" else SCALE)  # cells per tile side
    block = SCALE if layer == "tower" else 1  # cells of the kept token
    top, left = side, side + block  # tile (1, 1), token (0, 1)
    cells = (slice(None), slice(top, top + block), slice(left, left + block))
    assert explanation.grid_maps.shape[1:] == (rows * side, cols * side)
    both = np.abs(explanation.grid_maps) + np.abs(explanation.counterfactual_maps)
    assert (both[cells] > 0).all(axis=(1, 2)).any()
    both[cells] = 0
    assert not both.any()
    strongest = int(np.argmax(explanation.grid_maps[cells].sum(axis=(1, 2))))
    x, y = explanation.peak_xy(strongest)
    height, width = SHAPES[shape]
    assert top * height / (rows * side) <= y < (top + block) * height / (rows * side)
    assert left * width / (cols * side) <= x < (left + block) * width / (cols * side)


def test_hirescam_vanishes_before_the_vision_towers_layer_norm() -> None:
    """Why the default layer is the vision tower's post-layernorm: the last encoder layer feeds
    that layer norm, which ignores each token's scale and mean, so there the gradient is
    orthogonal to the activation and HiResCAM's per-cell sum of gradient x activation is ~0."""
    from mmcam.core import raw_maps

    strongest = {}
    for layer in ("model.vision_model.encoder.layers.1", "model.vision_model.post_layernorm"):
        adapter = mmcam.load(f"hf:{saved_idefics('idefics3')}", layer=layer)
        record = adapter.run(llava_image("wide"), CAPTION, guided=False, contrast=False).record
        strongest[layer] = float(raw_maps(record, "hirescam").abs().max())
    assert strongest["model.vision_model.encoder.layers.1"] < 0.01 * strongest["model.vision_model.post_layernorm"]


def test_a_language_model_layer_maps_its_image_tokens_on_the_tiles() -> None:
    """At ``model.text_model.layers.0`` the activations are that layer's hidden states at the
    image-token positions (as ``output_hidden_states`` gives them), tile by tile on the
    connector's grid; a VQA item's candidate rows share them, and its answers' maps (gradients
    summed over its rows) equal each answer's alone, in a minibatch too."""
    folder = saved_idefics("idefics3")
    captioner = mmcam.load(f"hf:{folder}", layer="model.text_model.layers.0")
    run = captioner.run(llava_image("wide"), CAPTION, guided=False, contrast=False)
    scorer = captioner.scorer
    pixels = _pixels(captioner, "wide")
    prefix = scorer.prompt_ids(pixels)
    with torch.no_grad():
        hidden = scorer.model(
            input_ids=torch.tensor([prefix + run.tokens.ids]), **scorer.views.inputs(pixels), output_hidden_states=True
        ).hidden_states[1][0]
    image = [position for position, token in enumerate(prefix) if token == scorer.prompt.image_token_id]
    tiles = hidden[image].reshape(2 * 3 + 1, 2, 2, -1)[:-1]  # (6 tiles, 2, 2, D), global view dropped
    expected = tiles.reshape(2, 3, 2, 2, -1).permute(4, 0, 2, 1, 3).reshape(-1, 4, 6)
    torch.testing.assert_close(run.record.activations[0], expected, atol=1e-6, rtol=0)
    assert run.record.layout == "language-model tokens at the image positions: tiles 2x3 of 2x2 tokens stitched to 4x6, global view left out"
    answerer = mmcam.load(f"hf:{folder}?task=vqa", layer="model.text_model.layers.0")
    questions, answers = [QUESTION, "is there a red square?"], [["red", "blue"], ["yes", "no"]]
    both = answerer.explain_batch([llava_image("tall")] * 2, questions, answers, guided=False)
    assert both[0].grid_maps.shape == (2, 6, 4) and np.abs(both[1].grid_maps).max() > 0
    for n in range(2):
        for k, answer in enumerate(answers[n]):
            alone = answerer.explain(llava_image("tall"), questions[n], [answer], guided=False)
            np.testing.assert_allclose(alone.grid_maps[0], both[n].grid_maps[k], atol=1e-5, rtol=0)


def test_answer_score_is_log_p_of_answer_and_end(answerer) -> None:
    scorer = answerer.scorer
    pixels = _pixels(answerer, "tall")
    question = scorer.prompt_ids(pixels, scorer.collate([scorer.tokenize(QUESTION)]))
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=question, **scorer.views.inputs(pixels), max_new_tokens=3, min_new_tokens=3, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )
        answer = generated.sequences[0, question.shape[1] : question.shape[1] + 2].tolist()
        steps = torch.log_softmax(torch.cat(generated.logits), dim=-1)
        expected = steps[0, answer[0]] + steps[1, answer[1]] + steps[2, scorer.end_id]
        other = scorer.answer_tokens("blue")[1]
        scores = scorer.score(pixels, scorer.collate([scorer.tokenize(QUESTION)]), [[tuple(answer), other]])
    assert scores.shape == (1, 2)
    torch.testing.assert_close(scores[0, 0], expected, atol=1e-5, rtol=0)


def test_vqa_answers_at_once_equal_each_alone_and_batch_equals_single(answerer) -> None:
    questions = [QUESTION, "is there a red square?"]
    images = [llava_image("wide"), llava_image("wide")]
    both = answerer.explain_batch(images, questions, [["red", "blue"], ["yes", "no"]], guided=False)
    for n, answers in enumerate([["red", "blue"], ["yes", "no"]]):
        for k, answer in enumerate(answers):
            alone = answerer.explain(images[n], questions[n], [answer], guided=False)
            np.testing.assert_allclose(alone.grid_maps[0], both[n].grid_maps[k], atol=1e-5, rtol=0)
            np.testing.assert_allclose(alone.scores[0], both[n].scores[k], atol=1e-5)
    assert both[0].grid_maps.shape == (2, 8, 12) and np.abs(both[0].grid_maps).max() > 0
    generated = answerer.explain(llava_image("square"), QUESTION, guided=False)
    assert generated.info["answer"] == generated.labels[0] and generated.grid_maps.shape == (1, 12, 12)


def test_one_view_without_splitting() -> None:
    """An image processor without splitting squashes the image to one tile: one view, its
    (TILE / PATCH)^2 grid, the prompt's global form."""
    from transformers import AutoProcessor

    folder = saved_idefics("idefics3", "no-splitting")
    captioner = mmcam.load(f"hf:{folder}")
    processor = AutoProcessor.from_pretrained(folder)
    expected = processor(images=_image("wide"), text=_rendered(processor, "Describe the image."), return_tensors="pt")
    pixels = _pixels(captioner, "wide")
    inputs = captioner.scorer.views.inputs(pixels)
    assert pixels.shape == (1, 3, TILE, TILE) and inputs["pixel_values"].shape == expected["pixel_values"].shape
    torch.testing.assert_close(inputs["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    assert captioner.scorer.prompt_ids(pixels) == tuple(expected["input_ids"][0].tolist())
    explanation = captioner.explain(llava_image("wide"), "a red circle", guided=False)
    assert explanation.grid_maps.shape == (3, TILE // PATCH, TILE // PATCH)
    assert captioner.scorer.reshape.describe() == "one view of 4x4 tokens (no tiles)"


def test_clear_errors() -> None:
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    from mmcam.adapters.hf.idefics import IdeficsPrompt
    from vlm_fixtures import llava_tokenizer
    from vlm_idefics_fixtures import TEMPLATE

    with pytest.raises(InputError, match="no chat template"):
        mmcam.load(f"hf:{saved_idefics('smolvlm', 'no-template')}")
    with pytest.raises(InputError, match="expands an image to 5 tokens per view, but the model reads 4"):
        mmcam.load(f"hf:{saved_idefics('idefics3', 'seq-len')}")
    without_tiles = Idefics3Processor(Idefics3ImageProcessor(), llava_tokenizer(), chat_template=TEMPLATE)
    with pytest.raises(InputError, match="lacks the image token.* <global-img>"):
        IdeficsPrompt(without_tiles, "tiny")
    adapter = mmcam.load(f"hf:{saved_idefics('idefics3')}")
    with pytest.raises(InputError, match="no whole number of 16-pixel tiles"):
        adapter.scorer.score(torch.zeros(1, 3, 20, 32), torch.tensor([[5]]))


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_caption_json(capsys, tmp_path, family: str) -> None:
    folder, image = saved_idefics(family), llava_image("tall")
    argv = ["caption", str(image), "--model", f"hf:{folder}", "--caption", "a red circle", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert set(record) == CAPTION_KEYS and record["layer"] == "model.vision_model.post_layernorm"
    assert [word["word"] for word in record["words"]] == ["a", "red", "circle"]
    assert all(np.load(word["heatmap"]).shape == SHAPES["tall"] for word in record["words"])


def test_cli_vqa_json(capsys) -> None:
    argv = ["vqa", str(llava_image("square")), QUESTION, "--model", f"hf:{saved_idefics('smolvlm')}", "--json", "--answer", "red"]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert set(record) == VQA_KEYS and record["explanations"][0]["answer"] == "red"
    assert record["explanations"][0]["score"] < 0
