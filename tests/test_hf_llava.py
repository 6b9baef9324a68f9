"""LLaVA through ``mmcam.load("hf:FOLDER")``: prompts from the checkpoint's processor, the vision
tower layer the language model reads, teacher-forced scores equal to ``generate``'s, every word
from one pass, on a tiny random LLaVA saved offline (see ``vlm_fixtures``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.errors import InputError
from vlm_fixtures import SHAPES, TEMPLATE, llava_image, saved_llava

CAPTION = "a red circle and a blue square"
QUESTION = "what color is the circle?"


@pytest.fixture(scope="module")
def captioner():
    return mmcam.load(f"hf:{saved_llava()}")


@pytest.fixture(scope="module")
def answerer():
    return mmcam.load(f"hf:{saved_llava()}?task=vqa")


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(saved_llava())


def _pixels(adapter, shape: str) -> torch.Tensor:
    return adapter.scorer.preprocess(np.array(Image.open(llava_image(shape)).convert("RGB")))[None]


def _state(model) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_the_prompt_is_the_processors_own(captioner, answerer, processor) -> None:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert rendered == "USER: <image>\nDescribe the image. ASSISTANT:"
    expected = processor(images=Image.open(llava_image("wide")), text=rendered, return_tensors="pt")
    assert captioner.scorer.prefix == tuple(expected["input_ids"][0].tolist())
    image_id = processor.tokenizer.image_token_id
    grid = expected["pixel_values"].shape[-1] // 8
    assert captioner.scorer.prefix.count(image_id) == grid * grid == 16  # one per patch, CLS dropped
    question = answerer.scorer.tokenize(QUESTION)
    asked = processor(images=Image.open(llava_image("tall")), text=rendered.replace("Describe the image.", QUESTION))
    assert question.ids == tuple(asked["input_ids"][0]) and question.words == ("what", "color", "is", "the", "circle")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_teacher_forced_scores_equal_generate(captioner, shape: str) -> None:
    scorer = captioner.scorer
    pixels = _pixels(captioner, shape)
    prompt = torch.tensor([scorer.prefix])
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=prompt, pixel_values=pixels, max_new_tokens=scorer.max_new_tokens, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )
        tokens = scorer.caption_of(generated.sequences[0].tolist())
        assert tokens == captioner.caption_tokens(llava_image(shape))
        forced = scorer.score(pixels, torch.tensor([tokens.ids])).logits
    expected = torch.log_softmax(torch.stack(generated.logits[: len(tokens.ids)], dim=1), dim=-1)
    assert forced.shape == expected.shape and len(tokens.ids) >= 1
    torch.testing.assert_close(torch.log_softmax(forced, dim=-1), expected, atol=1e-5, rtol=0)


def test_the_layer_is_the_one_the_language_model_reads(captioner, answerer) -> None:
    from mmcam.adapters.hf.llava import tower_layer

    # the default is the projector's output, chosen by measurement (LLaVA defaults in loading.py);
    # the tower block the language model reads: vision_feature_layer -2 of a 2-block tower,
    # hidden_states[-2] is block 0's output
    assert captioner.layer_name == answerer.scorer.layer == "model.multi_modal_projector"
    assert (captioner.default_method, answerer.default_method) == ("guided_hirescam", "hirescam")
    model = captioner.scorer.model
    assert tower_layer(model) == "model.vision_tower.encoder.layers.0"
    seen = {}
    handle = model.get_submodule(tower_layer(model)).register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=_pixels(captioner, "square"), vision_feature_layer=-2, vision_feature_select_strategy="default")
    handle.remove()
    block = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    torch.testing.assert_close(model.model.multi_modal_projector(block[:, 1:])[0], features.pooler_output[0])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_maps_cover_the_whole_original_image(captioner, shape: str) -> None:
    """Images are resized whole to the crop size (no centre crop): a stripe at the left edge of a
    wide image, which the processor's crop would cut off, is in the model's input, and each map
    is the 4x4 patch grid stretched onto the original image."""
    height, width = SHAPES[shape]
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[:, : width // 8] = (255, 0, 0)
    tensor = captioner.scorer.preprocess(pixels)
    assert tensor.shape == (3, 32, 32) and tensor[0, :, 0].min() > tensor[0, :, -1].max()
    explanation = captioner.explain(llava_image(shape), CAPTION, guided=False)
    assert explanation.grid_maps.shape == (7, 4, 4)
    assert explanation.heatmap(1).shape == (height, width)


def test_every_word_at_once_equals_each_word_alone(captioner) -> None:
    model = captioner.scorer.model
    with torch.no_grad():  # transformers installs its hidden-state recording hooks on a first forward
        captioner.scorer.score(_pixels(captioner, "wide"), torch.tensor([captioner.scorer.tokenize(CAPTION).ids]))
    before, hooks = _state(model), _hooks(model)
    together = captioner.explain(llava_image("wide"), CAPTION, guided=False, contrast=False)
    assert together.labels == CAPTION.split()
    assert np.abs(together.grid_maps).max() > 0
    for index in range(len(together.labels)):
        alone = captioner.explain(llava_image("wide"), CAPTION, words=[index], guided=False, contrast=False)
        np.testing.assert_allclose(alone.grid_maps[0], together.grid_maps[index], atol=1e-5, rtol=0)
        np.testing.assert_allclose(alone.scores[0], together.scores[index], atol=1e-5)
    after = _state(model)
    assert all(torch.equal(before[name], after[name]) for name in before) and _hooks(model) == hooks
    assert not model.training


@pytest.mark.parametrize("shape", ["square", "tall"])
def test_answer_score_is_log_p_of_answer_and_end(answerer, shape: str) -> None:
    """y^c = sum of the answer tokens' log-probs plus the end token's, as ``generate`` scores them."""
    scorer = answerer.scorer
    pixels = _pixels(answerer, shape)
    question = scorer.tokenize(QUESTION)
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=torch.tensor([question.ids]), pixel_values=pixels, max_new_tokens=3, min_new_tokens=3,
            do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        answer = generated.sequences[0, len(question.ids) : len(question.ids) + 2].tolist()
        steps = torch.log_softmax(torch.cat(generated.logits), dim=-1)
        expected = steps[0, answer[0]] + steps[1, answer[1]] + steps[2, scorer.end_id]
        other = scorer.answer_tokens("blue")[1]
        scores = scorer.score(pixels, scorer.collate([question]), [[tuple(answer), other]])
    assert scores.shape == (1, 2)
    torch.testing.assert_close(scores[0, 0], expected, atol=1e-5, rtol=0)


def test_vqa_answers_at_once_equal_each_alone_and_batch_equals_single(answerer) -> None:
    model = answerer.scorer.model
    before = _state(model)
    images = [llava_image("wide"), llava_image("tall")]
    both = answerer.explain_batch(images, [QUESTION, "is there a red square?"], [["red", "blue"], ["red", "blue"]], guided=False)
    for n, image in enumerate(images):
        question = [QUESTION, "is there a red square?"][n]
        for k, answer in enumerate(["red", "blue"]):
            alone = answerer.explain(image, question, [answer], guided=False)
            np.testing.assert_allclose(alone.grid_maps[0], both[n].grid_maps[k], atol=1e-5, rtol=0)
            np.testing.assert_allclose(alone.scores[0], both[n].scores[k], atol=1e-5)
    assert both[0].grid_maps.shape == (2, 4, 4) and np.abs(both[0].grid_maps).max() > 0
    generated = answerer.explain(images[0], QUESTION, guided=False)
    assert generated.info["answer"] == generated.labels[0] and generated.info["probability"] > 0
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in before.items())


def test_cls_kept_for_the_language_model_still_maps_the_patch_grid() -> None:
    answerer = mmcam.load(f"hf:{saved_llava('full')}?task=vqa")
    question = answerer.scorer.tokenize(QUESTION)
    assert question.ids.count(answerer.scorer.prompt.image_token_id) == 17  # CLS + 16 patches
    explanation = answerer.explain(llava_image("square"), QUESTION, ["red"], guided=False)
    assert explanation.grid_maps.shape == (1, 4, 4) and np.isfinite(explanation.scores).all()


def test_clear_errors() -> None:
    with pytest.raises(InputError, match="no chat template"):
        mmcam.load(f"hf:{saved_llava('no-template')}")
    with pytest.raises(InputError, match="task=caption|vqa"):
        mmcam.load(f"hf:{saved_llava()}?task=segment")
    with pytest.raises(InputError, match="VLM captioner only"):
        mmcam.load(f"hf:{saved_llava()}?task=vqa&instruction=Hi")


def test_the_instruction_is_an_option(processor) -> None:
    captioner = mmcam.load(f"hf:{saved_llava()}?instruction=Say%20what%20you%20see.")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Say what you see."}]}]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("USER: <image>\nSay what you see.") and "<image>" in TEMPLATE
    expected = processor(images=Image.open(llava_image("square")), text=rendered)["input_ids"][0]
    assert captioner.scorer.prefix == tuple(expected)
    assert captioner.explain(llava_image("square"), "a red circle", guided=False).grid_maps.shape == (3, 4, 4)


@pytest.mark.parametrize("shape", ["wide", "tall"])
def test_a_score_that_reads_one_patch_lights_up_that_place(captioner, shape: str) -> None:
    """The projector's output is zeroed for every image token but patch (1, 2) of the 4x4 grid:
    the words' scores then depend on the tower layer's output at that patch only, so HiResCAM
    (gradient x activation per cell) is 0 elsewhere, and the full-size map peaks inside that
    patch's place in the original image."""
    model = captioner.scorer.model
    keep = torch.zeros(16, 1)
    keep[1 * 4 + 2] = 1.0
    handle = model.model.multi_modal_projector.register_forward_hook(lambda module, args, output: output * keep)
    try:
        explanation = captioner.explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        handle.remove()
    both = np.abs(explanation.grid_maps) + np.abs(explanation.counterfactual_maps)
    assert (both[:, 1, 2] > 0).all()
    both[:, 1, 2] = 0
    assert not both.any()
    height, width = SHAPES[shape]
    strongest = int(np.argmax(explanation.grid_maps[:, 1, 2]))
    assert explanation.grid_maps[strongest, 1, 2] > 0
    x, y = explanation.peak_xy(strongest)
    assert 2 * width / 4 <= x < 3 * width / 4 and height / 4 <= y < 2 * height / 4
