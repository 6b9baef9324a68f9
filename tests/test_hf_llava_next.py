"""LLaVA-NeXT and LLaVA-OneVision through ``mmcam.load("hf:FOLDER")``: anyres tiles built inside
the forward pass as the processor builds them, prompts with the processor's image-token count,
maps stitched from the tiles over the original image, teacher-forced scores equal to
``generate``'s, on tiny random checkpoints saved offline (see ``vlm_llava_next_fixtures``)."""

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
from test_hf_cli import CAPTION_KEYS, WORD_KEYS
from vlm_fixtures import SHAPES, llava_image
from vlm_llava_next_fixtures import TILE, saved_llava_next, sized_image
from vlm_checks import check_words_at_once_equal_each_alone

CAPTION = "a red circle and a blue square"
QUESTION = "what color is the circle?"
VARIANTS = ["next", "onevision"]
# the stitched, unpadded tower grid (h, w) of each test image, worked out by hand from the
# pinpoints (see the fixtures): NeXT 40x64 -> pinpoint 32x64, 1x2 tiles of 4x4, resized to 32x52,
# padded by 6 columns a side -> 1 column of patches unpadded a side -> 4x6
GRIDS = {
    "next": {"square": (4, 4), "wide": (4, 6), "tall": (6, 4)},
    "onevision": {"square": (8, 8), "wide": (6, 8), "tall": (8, 6)},
}
# what the language model reads of that grid: OneVision's anyres_max_2 shrinks it by
# sqrt(h * w / (2 * 16)) (8x8 -> 5x5, 6x8 -> 4x6); NeXT reads it whole
READ = {
    "next": GRIDS["next"],
    "onevision": {"square": (5, 5), "wide": (4, 6), "tall": (6, 4)},
}
BASE_TOKENS = (TILE // 8) ** 2  # the base view: one tile's 4x4 patches


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def captioners():
    loaded = {name: mmcam.load(f"hf:{saved_llava_next(name)}") for name in VARIANTS}
    for captioner in loaded.values():
        captioner.scorer.max_new_tokens = 8  # generated captions of the random models: short is enough
    return loaded


@pytest.fixture(scope="module")
def processors():
    from transformers import AutoProcessor

    return {name: AutoProcessor.from_pretrained(saved_llava_next(name)) for name in VARIANTS}


def _pixels(adapter, path) -> torch.Tensor:
    return adapter.scorer.preprocess(np.array(Image.open(path).convert("RGB")))[None]


def _processed(processor, path, text: str = "Describe the image."):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return processor(images=Image.open(path).convert("RGB"), text=rendered, return_tensors="pt")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_prompt_and_model_inputs_are_the_processors(captioners, processors, variant: str, shape: str) -> None:
    """The prompt ids equal the processor's for the image; image_sizes equal; pixel_values
    (base view and tiles) agree within about one uint8 level (the processor resizes uint8 pixels
    and rounds, the adapter resizes floats), and to 1e-5 where no resize happens."""
    scorer, processor = captioners[variant].scorer, processors[variant]
    expected = _processed(processor, llava_image(shape))
    pixels = _pixels(captioners[variant], llava_image(shape))
    assert pixels.shape == (1, 3, *SHAPES[shape])  # the image at its own size
    inputs = scorer.model_images(pixels)
    assert scorer.prompts.expand(scorer.prefix, SHAPES[shape]) == expected["input_ids"][0].tolist()
    assert inputs["image_sizes"].tolist() == expected["image_sizes"].tolist() == [list(SHAPES[shape])]
    assert inputs["pixel_values"].shape == expected["pixel_values"].shape
    std = torch.tensor(processor.image_processor.image_std)[:, None, None]
    difference = (inputs["pixel_values"] - expected["pixel_values"]).abs()
    # in uint8 levels: rounding (0.5) plus torchvision's fixed-point uint8 kernel; measured <= 1.03
    assert (difference * std * 255).max() <= 1.1
    if variant == "onevision" and shape != "square":  # 40x64 fits the 64x64 pinpoint unresized
        assert difference[:, 1:].max() <= 1e-5


@pytest.mark.parametrize("size", [(32, 32), (32, 64)])
def test_model_inputs_equal_the_processors_where_nothing_is_resized(captioners, processors, size) -> None:
    """A 32x32 image is its own base view and tile; a 32x64 image is its pinpoint (two tiles)."""
    scorer = captioners["next"].scorer
    expected = _processed(processors["next"], sized_image(*size))
    inputs = scorer.model_images(_pixels(captioners["next"], sized_image(*size)))
    torch.testing.assert_close(inputs["pixel_values"][:, 1:], expected["pixel_values"][:, 1:], atol=1e-5, rtol=0)
    if size == (32, 32):
        torch.testing.assert_close(inputs["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_map_is_the_stitched_tile_grid_the_processor_lays_out(captioners, processors, variant: str, shape: str) -> None:
    """The map's grid is the tiles' unpadded patch grid; the processor's image-token count is the
    base view's tokens plus the rows the language model reads, each with its newline token."""
    explanation = captioners[variant].explain(llava_image(shape), "a red circle", guided=True, contrast=False)
    assert explanation.grid_maps.shape == (3, *GRIDS[variant][shape])
    assert np.abs(explanation.grid_maps).max() > 0
    assert explanation.guided_gradients.shape == (3, 3, *SHAPES[shape])  # on the original image
    assert explanation.heatmap(0).shape == SHAPES[shape]
    tokens = _processed(processors[variant], llava_image(shape))["input_ids"][0]
    rows, columns = READ[variant][shape]
    assert int((tokens == processors[variant].tokenizer.image_token_id).sum()) == BASE_TOKENS + rows * (columns + 1)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_projector_layout_is_the_models_own_packing(shape: str) -> None:
    """At the projector, the stitched grid equals what the model itself packs for the language
    model (after the base view's tokens, rows of image features each closed by a newline)."""
    adapter = mmcam.load(f"hf:{saved_llava_next('next')}", layer="model.multi_modal_projector")
    scorer = adapter.scorer
    model, pixels = scorer.model, _pixels(adapter, llava_image(shape))
    seen = {}
    handle = model.model.multi_modal_projector.register_forward_hook(lambda module, args, output: seen.update(out=output))
    with torch.no_grad():
        packed = model.model.get_image_features(**scorer.model_images(pixels)).pooler_output[0]
    handle.remove()
    grid = scorer.reshape(seen["out"])[0]  # (C, h, w)
    rows, columns = GRIDS["next"][shape]
    assert grid.shape[1:] == (rows, columns)
    laid = packed[BASE_TOKENS:].reshape(rows, columns + 1, -1)
    torch.testing.assert_close(grid.permute(1, 2, 0), laid[:, :columns], atol=0, rtol=0)
    assert adapter.explain(llava_image(shape), "a red circle", guided=False).grid_maps.shape == (3, rows, columns)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_language_model_layer_is_laid_out_on_the_grid_it_reads(variant: str, shape: str) -> None:
    """At language-model layer 0, the layout reads the layer's input at the image placeholders
    as the grid the model packs there (OneVision's shrunk grid), base view and newlines dropped."""
    adapter = mmcam.load(f"hf:{saved_llava_next(variant)}", layer="model.language_model.layers.0")
    scorer = adapter.scorer
    model, pixels = scorer.model, _pixels(adapter, llava_image(shape))
    seen = {}

    def keep_input(module, args, kwargs):
        seen["states"] = args[0] if args else kwargs["hidden_states"]

    with torch.no_grad():
        packed = model.model.get_image_features(**scorer.model_images(pixels)).pooler_output[0]
        handle = model.model.language_model.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
        try:
            scorer.score(pixels, torch.tensor([scorer.tokenize("a red circle").ids]))
        finally:
            handle.remove()
    rows, columns = READ[variant][shape]
    grid = scorer.reshape(seen["states"])[0]
    laid = packed[BASE_TOKENS:].reshape(rows, columns + 1, -1)[:, :columns]
    torch.testing.assert_close(grid.permute(1, 2, 0), laid, atol=0, rtol=0)
    explanation = adapter.explain(llava_image(shape), "a red circle", guided=False)
    assert explanation.grid_maps.shape == (3, rows, columns) and np.abs(explanation.grid_maps).max() > 0


@pytest.mark.parametrize("shape", list(SHAPES))
def test_teacher_forced_scores_equal_generate(captioners, variant: str, shape: str) -> None:
    captioner = captioners[variant]
    scorer = captioner.scorer
    pixels = _pixels(captioner, llava_image(shape))
    prompt = torch.tensor([scorer.prompts.expand(scorer.prefix, SHAPES[shape])])
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=prompt, **scorer.model_images(pixels), max_new_tokens=scorer.max_new_tokens, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )
        ids = generated.sequences[0, prompt.shape[1] :].tolist()
        tokens = captioner.caption_tokens(llava_image(shape))
        assert ids[: len(tokens.ids)] == list(tokens.ids) and len(tokens.ids) >= 1
        forced = scorer.score(pixels, torch.tensor([tokens.ids])).logits
    expected = torch.log_softmax(torch.stack(generated.logits[: len(tokens.ids)], dim=1), dim=-1)
    torch.testing.assert_close(torch.log_softmax(forced, dim=-1), expected, atol=1e-5, rtol=0)


def test_every_word_at_once_equals_each_word_alone(captioners, variant: str) -> None:
    check_words_at_once_equal_each_alone(captioners[variant], llava_image("tall"), CAPTION)


# (variant, shape): (the image's view holding the kept token, its patch row and column), and the
# cell of the stitched unpadded grid where it lies (hand-worked from GRIDS' tilings)
ONE_PATCH = {
    ("next", "wide"): ((2, 2, 1), (2, 4)),  # right tile, column 4 + 1, one column unpadded
    ("next", "tall"): ((2, 1, 2), (4, 2)),  # lower tile, row 4 + 1, one row unpadded
    ("onevision", "wide"): ((4, 0, 3), (3, 7)),  # lower right tile, row 4 + 0, one row unpadded
    ("onevision", "tall"): ((3, 2, 1), (6, 0)),  # lower left tile, column 1, its column 0 unpadded
}


@pytest.mark.parametrize("case", list(ONE_PATCH), ids=lambda case: "-".join(case))
def test_a_score_that_reads_one_tile_patch_lights_up_its_place(captioners, case) -> None:
    """The projector's output is zeroed for every view's tokens but one patch of one tile: the
    scores then depend on the tower layer there only, so HiResCAM is 0 at every other cell, and
    the full-size map peaks inside that cell's place in the original image."""
    variant, shape = case
    (view, row, column), cell = ONE_PATCH[case]
    captioner = captioners[variant]
    model = captioner.scorer.model
    views = captioner.scorer.views.tiling(SHAPES[shape]).views
    keep = torch.zeros(views, 16, 1)
    keep[view, row * 4 + column] = 1.0
    handle = model.model.multi_modal_projector.register_forward_hook(lambda module, args, output: output * keep)
    try:
        explanation = captioner.explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        handle.remove()
    both = np.abs(explanation.grid_maps) + np.abs(explanation.counterfactual_maps)
    assert (both[(slice(None), *cell)] > 0).all()
    both[(slice(None), *cell)] = 0
    assert not both.any()
    strongest = int(np.argmax(explanation.grid_maps[(slice(None), *cell)]))
    x, y = explanation.peak_xy(strongest)
    (height, width), (rows, columns) = SHAPES[shape], GRIDS[variant][shape]
    assert cell[1] * width / columns <= x < (cell[1] + 1) * width / columns
    assert cell[0] * height / rows <= y < (cell[0] + 1) * height / rows


def test_answer_score_is_log_p_of_answer_and_end(variant: str) -> None:
    answerer = mmcam.load(f"hf:{saved_llava_next(variant)}?task=vqa")
    scorer = answerer.scorer
    pixels = _pixels(answerer, llava_image("wide"))
    question = scorer.tokenize(QUESTION)
    assert question.ids.count(scorer.prompt.image_token_id) == 1  # expanded per image size
    prompt = torch.tensor([scorer.prompts.expand(question.ids, SHAPES["wide"])])
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=prompt, **scorer.model_images(pixels), max_new_tokens=3, min_new_tokens=3,
            do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        answer = generated.sequences[0, prompt.shape[1] : prompt.shape[1] + 2].tolist()
        steps = torch.log_softmax(torch.cat(generated.logits), dim=-1)
        expected = steps[0, answer[0]] + steps[1, answer[1]] + steps[2, scorer.end_id]
        scores = scorer.score(pixels, scorer.collate([question]), [[tuple(answer), scorer.answer_tokens("blue")[1]]])
    torch.testing.assert_close(scores[0, 0], expected, atol=1e-5, rtol=0)
    explanation = answerer.explain(llava_image("wide"), QUESTION, ["red", "blue"], guided=False)
    assert explanation.grid_maps.shape == (2, *GRIDS[variant]["wide"]) and np.abs(explanation.grid_maps).max() > 0
    generated_answer = answerer.explain(llava_image("tall"), QUESTION, guided=False)
    assert generated_answer.labels[0] == generated_answer.info["answer"]


def test_answers_at_a_language_model_layer_at_once_equal_each_alone(variant: str) -> None:
    """Each candidate answer is its own row of the language model; an answer's map reads its
    own row, so it is the same beside another candidate as alone."""
    answerer = mmcam.load(f"hf:{saved_llava_next(variant)}?task=vqa", layer="model.language_model.layers.0")
    both = answerer.explain(llava_image("square"), QUESTION, ["red", "blue square"], guided=False)
    assert both.grid_maps.shape == (2, *READ[variant]["square"]) and np.abs(both.grid_maps).max() > 0
    for k, answer in enumerate(["red", "blue square"]):
        alone = answerer.explain(llava_image("square"), QUESTION, [answer], guided=False)
        np.testing.assert_allclose(alone.grid_maps[0], both.grid_maps[k], atol=1e-5, rtol=0)
        np.testing.assert_allclose(alone.scores[0], both.scores[k], atol=1e-5)


def test_clear_errors(processors) -> None:
    from mmcam.adapters.hf.llava_next_views import AnyresViews

    with pytest.raises(InputError, match="no chat template"):
        mmcam.load(f"hf:{saved_llava_next('next-no-template')}")
    for layer in ("model.language_model.layers.1", "lm_head"):  # the last layer reaches no scored token
        with pytest.raises(InputError, match="holds no image tokens on the tile grid"):
            mmcam.load(f"hf:{saved_llava_next('next')}", layer=layer)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(saved_llava_next("next"))
    image_processor = processors["next"].image_processor
    AnyresViews.from_processor(image_processor, config, "tiny")  # the saved pair agrees
    other = type(image_processor)(**{**image_processor.to_dict(), "image_grid_pinpoints": [[32, 32], [64, 64]]})
    with pytest.raises(InputError, match="image_grid_pinpoints .* differ from the model's"):
        AnyresViews.from_processor(other, config, "tiny")
    other = type(image_processor)(**{**image_processor.to_dict(), "crop_size": {"height": 24, "width": 24}})
    with pytest.raises(InputError, match="not the vision tower's 32x32 input"):
        AnyresViews.from_processor(other, config, "tiny")


def test_caption_json_on_a_saved_llava_next_folder(capsys, tmp_path) -> None:
    folder, image = saved_llava_next("next"), llava_image("wide")
    argv = ["caption", str(image), "--model", f"hf:{folder}", "--caption", "a red circle", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert set(record) == CAPTION_KEYS and record["layer"] == "model.vision_tower.encoder.layers.0"
    assert [word["word"] for word in record["words"]] == ["a", "red", "circle"]
    for word in record["words"]:
        assert set(word) == WORD_KEYS and np.load(word["heatmap"]).shape == SHAPES["wide"]


def test_a_batch_of_sizes_equals_each_image_alone(captioners) -> None:
    """Two 40x64 images share a pass (one tiling, one prompt); a 64x40 one gets its own; every
    image's maps and scores equal its own explanation's."""
    captioner = captioners["next"]
    images = [llava_image("wide"), llava_image("tall"), sized_image(40, 64)]
    together = captioner.explain_batch(images, [CAPTION] * 3, guided=False, contrast=False)
    for image, batched in zip(images, together, strict=True):
        alone = captioner.explain(image, CAPTION, guided=False, contrast=False)
        assert batched.grid_maps.shape == alone.grid_maps.shape
        np.testing.assert_allclose(batched.grid_maps, alone.grid_maps, atol=1e-5, rtol=0)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)
    assert together[0].grid_maps.shape[1:] == GRIDS["next"]["wide"] and together[1].grid_maps.shape[1:] == GRIDS["next"]["tall"]
