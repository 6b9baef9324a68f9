"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL through ``mmcam.load("hf:FOLDER")`` on tiny random
checkpoints saved offline (see ``vlm_qwen_fixtures``): pixels, prompts and grids equal the
processor's own; teacher-forced scores equal ``generate``'s (right-padded rows too); maps lie on
the processor's grid (window attention and DeepStack included) and light up the one image
token a score is made to read; every word at once equals each alone; the model is unchanged."""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.adapters.hf import qwen_vl
from mmcam.adapters.hf.loading import Loaded
from mmcam.adapters.hf.qwen_vl import DEFAULT_INSTRUCTION
from mmcam.errors import InputError
from test_hf_llava import _hooks, _state
from vlm_fixtures import SHAPES, llava_image
from vlm_qwen_fixtures import CLASSES, GRIDS, MERGE, saved_qwen
from vlm_checks import check_words_at_once_equal_each_alone

CAPTION = "a red circle"
QUESTIONS = ("what color is the circle?", "is there a red square?")
LAST_BLOCK, MERGER, LANGUAGE = "model.visual.blocks.1", "model.visual.merger", "model.language_model.layers.0"
SHORT = {"Qwen2VLForConditionalGeneration": "qwen2", "Qwen2_5_VLForConditionalGeneration": "qwen2.5", "Qwen3VLForConditionalGeneration": "qwen3"}


@functools.cache
def _loaded(architecture: str) -> Loaded:
    """One load per class (through ``mmcam.load``); the adapters below share its model."""
    scorer = mmcam.load(f"hf:{saved_qwen(architecture)}").scorer
    return Loaded(scorer.name, scorer.model, scorer.tokenizer, None, saved_qwen(architecture))


@functools.cache
def _captioner(architecture: str, layer: str | None = None):
    loaded = _loaded(architecture)
    return qwen_vl.captioner(loaded, layer or qwen_vl.default_layer(loaded.model))


@functools.cache
def _answerer(architecture: str, layer: str | None = None):
    loaded = _loaded(architecture)
    return qwen_vl.answers(loaded, layer or qwen_vl.default_layer(loaded.model))


@functools.cache
def _processor(architecture: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(saved_qwen(architecture))


def _image(shape: str, flip: bool = False) -> Image.Image:
    image = Image.open(llava_image(shape)).convert("RGB")
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


def _processed(architecture: str, image: Image.Image, text: str = DEFAULT_INSTRUCTION):
    processor = _processor(architecture)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return processor(images=image, text=rendered, return_tensors="pt")


def _generate(model, inputs, steps: int):
    """``generate``'s greedy new tokens and their raw logits, from the processor's own inputs."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), torch.log_softmax(torch.cat(out.logits), dim=-1)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("architecture", CLASSES, ids=SHORT.get)
def test_pixels_grid_and_prompt_equal_the_processors(architecture: str, shape: str) -> None:
    scorer = _captioner(architecture).scorer
    expected = _processed(architecture, _image(shape))
    tensor = scorer.preprocess(np.array(_image(shape)))
    height, width = GRIDS[shape]
    assert tensor.shape == (3, 4 * height, 4 * width)  # the processor's smart_resize under its pixel budget
    pixel_values, grid = scorer.qwen.images.patches(tensor[None])
    assert grid.tolist() == expected["image_grid_thw"].tolist() == [[1, height, width]]
    torch.testing.assert_close(pixel_values, expected["pixel_values"], atol=1e-5, rtol=0)
    (prompt,) = scorer.qwen.rows(tensor[None], [scorer.qwen.prompt.ids(DEFAULT_INSTRUCTION)])
    assert prompt == expected["input_ids"][0].tolist()
    image_id = scorer.qwen.prompt.image_token_id
    assert [int(token == image_id) for token in prompt] == expected["mm_token_type_ids"][0].tolist()
    assert prompt.count(image_id) == height * width // MERGE**2


def test_an_image_already_at_its_resized_size_is_only_normalised() -> None:
    """24x40 fits the processor's rules as it is: the tensor is the image itself, normalised, in
    its own orientation (the patches read back to rows and columns, not transposed or shuffled)."""
    images = _captioner(CLASSES[0]).scorer.qwen.images
    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    processor = images.processor
    mean, std = torch.tensor(processor.image_mean)[:, None, None], torch.tensor(processor.image_std)[:, None, None]
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(images.preprocess(pixels), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("architecture", CLASSES, ids=SHORT.get)
def test_teacher_forced_scores_equal_generate_also_right_padded(architecture: str, shape: str) -> None:
    """Two images of one size in one pass, the second caption cut shorter and right-padded:
    each row's scores equal ``generate``'s for that image (run from the processor's own
    inputs), and the adapter's own ``generate`` gives the same tokens."""
    scorer = _captioner(architecture).scorer
    images = [_image(shape), _image(shape, flip=True)]
    runs = [_generate(scorer.model, _processed(architecture, image), steps=5) for image in images]
    pixels = torch.stack([scorer.preprocess(np.array(image)) for image in images])
    new = scorer.qwen.generate(pixels, scorer.qwen.prompt.ids(DEFAULT_INSTRUCTION), max_new_tokens=5, min_new_tokens=5)
    assert new.tolist() == [tokens for tokens, _ in runs]
    lengths = (5, 3)
    ids = torch.full((2, 5), scorer.pad_id)
    for n, length in enumerate(lengths):
        ids[n, :length] = torch.tensor(runs[n][0][:length])
    with torch.no_grad():
        forced = torch.log_softmax(scorer.score(pixels, ids).logits, dim=-1)
    for n, length in enumerate(lengths):
        torch.testing.assert_close(forced[n, :length], runs[n][1][:length], atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", CLASSES, ids=SHORT.get)
def test_answer_scores_equal_generate_also_right_padded(architecture: str) -> None:
    """y^c = log p(answer tokens + end), for two items whose prompts and candidates differ in
    length (rows right-padded), each as ``generate`` scores it."""
    scorer = _answerer(architecture).scorer
    shape = {"Qwen2VLForConditionalGeneration": "tall", "Qwen2_5_VLForConditionalGeneration": "wide"}.get(architecture, "square")
    images = [_image(shape), _image(shape, flip=True)]
    expected, candidates = [], []
    for image, question, length in zip(images, QUESTIONS, (2, 1), strict=True):
        tokens, steps = _generate(scorer.model, _processed(architecture, image, question), steps=length + 1)
        answer = tuple(tokens[:length])
        expected.append(sum(steps[k, answer[k]] for k in range(length)) + steps[length, scorer.end_id])
        candidates.append([answer, scorer.answer_tokens("blue square")[1]])
    pixels = torch.stack([scorer.preprocess(np.array(image)) for image in images])
    questions = scorer.collate([scorer.tokenize(question) for question in QUESTIONS])
    assert (questions == scorer.pad_id).any()  # the shorter question is padded
    with torch.no_grad():
        scores = scorer.score(pixels, questions, candidates)
    assert scores.shape == (2, 2)
    torch.testing.assert_close(scores[:, 0], torch.stack(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("architecture", CLASSES, ids=SHORT.get)
def test_maps_lie_on_the_processors_grid(architecture: str, shape: str) -> None:
    """Patch grid (h, w) = image_grid_thw's at a vision block; (h/2, w/2), one cell per image
    token the language model reads, at the merger and at a language-model layer."""
    height, width = GRIDS[shape]
    expected = {LAST_BLOCK: (height, width), MERGER: (height // MERGE, width // MERGE), LANGUAGE: (height // MERGE, width // MERGE)}
    layer = [LAST_BLOCK, MERGER, LANGUAGE][list(SHAPES).index(shape)]
    explanation = _captioner(architecture, layer).explain(llava_image(shape), CAPTION, guided=False, contrast=False)
    assert explanation.grid_maps.shape == (3, *expected[layer]) and np.abs(explanation.grid_maps).max() > 0
    assert explanation.heatmap(0).shape == SHAPES[shape]
    answer = _answerer(architecture, layer).explain(llava_image(shape), QUESTIONS[0], ["red", "blue square"], guided=False)
    assert answer.grid_maps.shape == (2, *expected[layer]) and np.isfinite(answer.scores).all()


def _keep_one_image_token(model, cell: int):
    """A pre-hook on the language model that zeroes every image token's input embedding (and,
    Qwen3-VL, its DeepStack features) but image token ``cell``'s: the scores then read the image
    through that one token only."""
    image_id = model.config.image_token_id

    def hook(module, args, kwargs):
        ids = hook.ids
        mask = (ids == image_id).cumsum(dim=1).sub(1).ne(cell) & (ids == image_id)
        kwargs["inputs_embeds"] = kwargs["inputs_embeds"].masked_fill(mask[..., None], 0.0)
        if kwargs.get("deepstack_visual_embeds") is not None:
            keep = torch.zeros(int((ids == image_id).sum()), 1)
            keep.view(ids.shape[0], -1)[:, cell] = 1.0
            kwargs["deepstack_visual_embeds"] = [embeds * keep for embeds in kwargs["deepstack_visual_embeds"]]
        return args, kwargs

    def record_ids(module, args, kwargs):
        hook.ids = kwargs["input_ids"]

    return [
        model.register_forward_pre_hook(record_ids, with_kwargs=True),
        model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True),
    ]


@pytest.mark.parametrize(("shape", "layer"), [("wide", LAST_BLOCK), ("tall", MERGER)])
@pytest.mark.parametrize("architecture", CLASSES, ids=SHORT.get)
def test_a_score_that_reads_one_image_token_lights_up_its_place(architecture: str, shape: str, layer: str) -> None:
    """Only image token (1, 2) of the merged grid reaches the language model: HiResCAM is then
    nonzero only at that cell (merger) or its 2x2 patches (last block), and the full-size map
    peaks inside that cell's place in the original image (Qwen2.5-VL's window order undone)."""
    captioner = _captioner(architecture, layer)
    model = captioner.scorer.model
    height, width = GRIDS[shape]
    row, column = 1, 2
    handles = _keep_one_image_token(model, row * (width // MERGE) + column)
    try:
        explanation = captioner.explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        for handle in handles:
            handle.remove()
    scale = 1 if layer == MERGER else MERGE
    cells = np.abs(explanation.grid_maps) + np.abs(explanation.counterfactual_maps)
    inside = cells[:, row * scale : (row + 1) * scale, column * scale : (column + 1) * scale]
    assert (inside.reshape(len(cells), -1).max(axis=1) > 0).all()
    assert inside.sum() == pytest.approx(cells.sum(), rel=1e-6)  # zero everywhere else
    image_height, image_width = SHAPES[shape]
    cell_height, cell_width = image_height / (height // MERGE), image_width / (width // MERGE)
    full = [*explanation.heatmaps, *explanation.counterfactual]  # a word whose evidence there is negative peaks in the latter
    peaks = [np.unravel_index(np.argmax(heat), heat.shape) for heat in full if heat.max() > 0]
    assert len(peaks) >= len(cells)
    for y, x in peaks:
        assert column * cell_width <= x < (column + 1) * cell_width and row * cell_height <= y < (row + 1) * cell_height


@pytest.mark.parametrize("architecture", CLASSES, ids=SHORT.get)
def test_every_word_at_once_equals_each_word_alone_and_the_model_is_unchanged(architecture: str) -> None:
    captioner = _captioner(architecture)
    check_words_at_once_equal_each_alone(captioner, llava_image("tall"), CAPTION)
    model = captioner.scorer.model
    before, hooks = _state(model), _hooks(model)
    together = captioner.explain(llava_image("tall"), CAPTION, guided=True, contrast=False)
    # Guided Backprop reaches the resized image through the patches built in the forward
    assert together.guided_gradients.shape == (3, 3, 40, 24)
    assert (np.abs(together.guided_gradients).max(axis=(1, 2, 3)) > 0).all()
    after = _state(model)
    assert all(torch.equal(before[name], after[name]) for name in before) and _hooks(model) == hooks


def test_vqa_answers_at_a_language_layer_at_once_equal_each_alone() -> None:
    """Rows of one item (one per candidate) share its image-token states: the map of each answer
    of a two-item batch equals its own single pass."""
    answerer = _answerer(CLASSES[1], LANGUAGE)
    images = [llava_image("wide"), llava_image("wide")]
    both = answerer.explain_batch(images, list(QUESTIONS), [["red", "blue"], ["red", "blue"]], guided=False)
    for n, question in enumerate(QUESTIONS):
        for k, answer in enumerate(["red", "blue"]):
            alone = answerer.explain(images[n], question, [answer], guided=False)
            np.testing.assert_allclose(alone.grid_maps[0], both[n].grid_maps[k], atol=1e-5, rtol=0)
            np.testing.assert_allclose(alone.scores[0], both[n].scores[k], atol=1e-5)
    assert both[0].grid_maps.shape == (2, 3, 5)


def test_default_layers_and_qwen3s_deepstack() -> None:
    """Qwen2/2.5-VL: the last block. Qwen3-VL: its earliest DeepStack block, whose gradient holds
    the DeepStack path: with the main merger's output zeroed, the words still depend on the image
    there, while the last block (read by the main merger only) gets no gradient at all."""
    assert [mmcam.load(f"hf:{saved_qwen(name)}").layer_name for name in CLASSES] == [LAST_BLOCK, LAST_BLOCK, "model.visual.blocks.0"]
    default, last = _captioner(CLASSES[2]), _captioner(CLASSES[2], LAST_BLOCK)
    deepstack = _captioner(CLASSES[2], "model.visual.deepstack_merger_list.0")
    handle = default.scorer.model.model.visual.merger.register_forward_hook(lambda module, args, output: output * 0.0)
    try:
        kept = default.explain(llava_image("square"), CAPTION, method="hirescam", guided=False, contrast=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cut = last.explain(llava_image("square"), CAPTION, method="hirescam", guided=False, contrast=False)
        side = deepstack.explain(llava_image("square"), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        handle.remove()
    assert last.scorer.model is default.scorer.model and (np.abs(kept.grid_maps).max(axis=(1, 2)) > 0).all()
    assert not cut.grid_maps.any() and any("zero everywhere" in str(w.message) for w in caught)
    assert side.grid_maps.shape == (3, 4, 4) and (np.abs(side.grid_maps).max(axis=(1, 2)) > 0).all()  # the DeepStack merger's tokens


@pytest.mark.parametrize("architecture", CLASSES, ids=SHORT.get)
def test_the_language_models_attention_to_the_image_tokens(architecture: str) -> None:
    """attention=True: each caption step's attention to the image tokens (mean over layers and
    heads) on the merged grid; a share of each step's attention, so in [0, 1]; the scores are
    those of the default sdpa pass."""
    scorer = dataclasses.replace(_captioner(architecture).scorer, attention=True)
    pixels = scorer.preprocess(np.array(_image("wide")))[None]
    ids = torch.tensor([scorer.tokenize(CAPTION).ids])
    with torch.no_grad():
        scores = scorer.score(pixels, ids)
        plain = _captioner(architecture).scorer.score(pixels, ids)
    assert scores.attention.shape == (1, ids.shape[1], 3, 5)
    totals = scores.attention.sum(dim=(2, 3))
    assert (scores.attention >= 0).all() and (totals > 0).all() and (totals <= 1 + 1e-6).all()
    torch.testing.assert_close(scores.logits, plain.logits, atol=1e-4, rtol=0)
    assert scorer.model.model.language_model.config._attn_implementation == "sdpa"  # switched back
    # by hand: the processor's inputs plus the caption, eager attention, placeholder columns
    inputs = _processed(architecture, _image("wide"))
    prompt_length = inputs["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        extra = ids if key == "input_ids" else torch.ones_like(ids) if key == "attention_mask" else torch.zeros_like(ids)
        inputs[key] = torch.cat([inputs[key], extra.to(inputs[key].dtype)], dim=1)
    language = scorer.model.model.language_model
    previous = language.config._attn_implementation
    language.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            weights = scorer.model(**inputs, output_attentions=True).attentions
    finally:
        language.set_attn_implementation(previous)
    columns = inputs["mm_token_type_ids"][0].nonzero().flatten()
    rows = torch.arange(prompt_length - 1, prompt_length - 1 + ids.shape[1])
    expected = torch.stack(weights).mean(dim=(0, 2))[0][rows][:, columns].reshape(ids.shape[1], 3, 5)
    torch.testing.assert_close(scores.attention[0], expected, atol=1e-5, rtol=0)


def test_clear_errors() -> None:
    with pytest.raises(InputError, match="no chat template"):
        mmcam.load(f"hf:{saved_qwen(CLASSES[0], 'no-template')}")
    with pytest.raises(InputError, match="model.visual.merger"):
        mmcam.load(f"hf:{saved_qwen(CLASSES[0])}", layer="model.visual.patch_embed")
    with pytest.raises(InputError, match="last layer"):  # its image-token states reach no later token
        mmcam.load(f"hf:{saved_qwen(CLASSES[0])}?task=vqa", layer="model.language_model.layers.1")


def test_a_processor_whose_patches_differ_from_the_towers_is_refused() -> None:
    from mmcam.adapters.hf.qwen_vl_inputs import QwenImages

    vision = copy.deepcopy(_loaded(CLASSES[0]).model.config.vision_config)
    vision.patch_size = 14
    with pytest.raises(InputError, match="vision tower"):
        QwenImages.of(_processor(CLASSES[0]).image_processor, vision, "hf:x")


def test_the_instruction_is_an_option() -> None:
    captioner = mmcam.load(f"hf:{saved_qwen(CLASSES[0])}?instruction=Say%20what%20you%20see.")
    expected = _processed(CLASSES[0], _image("square"), "Say what you see.")["input_ids"][0].tolist()
    pixels = captioner.scorer.preprocess(np.array(_image("square")))[None]
    assert captioner.scorer.qwen.rows(pixels, [captioner.scorer.qwen.prompt.ids("Say what you see.")])[0] == expected
    assert captioner.scorer.instruction == "Say what you see."


def test_a_batch_of_wide_and_tall_images_equals_each_alone() -> None:
    """Images of different resized sizes are explained in one pass per size; each equals its own."""
    captioner = _captioner(CLASSES[1])
    images = [llava_image("wide"), llava_image("tall"), llava_image("wide")]
    captions = [CAPTION, "a blue square", "a red circle and a blue square"]
    together = captioner.explain_batch(images, captions, guided=False, contrast=False)
    for image, caption, explained in zip(images, captions, together, strict=True):
        alone = captioner.explain(image, caption, guided=False, contrast=False)
        assert explained.grid_maps.shape == alone.grid_maps.shape == (len(caption.split()), *GRIDS[str(image.stem).split("-")[1]])
        np.testing.assert_allclose(explained.grid_maps, alone.grid_maps, atol=1e-5, rtol=0)
        np.testing.assert_allclose(explained.scores, alone.scores, atol=1e-5)
