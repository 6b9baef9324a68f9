"""InstructBLIP through ``mmcam.load("hf:FOLDER")``: the instruction read by the Q-Former and the
language model as the checkpoint's processor writes it, the map on the vision tower's patch grid
(the Q-Former's query tokens refused as a layer), teacher-forced scores equal to ``generate``'s,
every word from one pass; tiny random checkpoints with a Llama and a T5 language model (see
``vlm_instructblip_fixtures``)."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.adapters.hf.instructblip import DEFAULT_INSTRUCTION
from mmcam.cli import main
from mmcam.errors import InputError
from test_hf_cli import CAPTION_KEYS, VQA_KEYS
from test_hf_llava import _state
from vlm_checks import check_generated_batch_equals_single, check_one_cell_lit, check_words_at_once_equal_each_alone
from vlm_fixtures import SHAPES, llava_image
from vlm_instructblip_fixtures import QUERY_TOKENS, saved_instructblip

CAPTION = "a red circle and a blue square"
QUESTION = "what color is the circle?"
LANGUAGES = ["llama", "t5"]


# every aspect ratio on the Llama checkpoint, one on the T5 one
SHAPED = [("llama", shape) for shape in SHAPES] + [("t5", "wide")]


@functools.cache
def _adapter(language: str, task: str):
    return mmcam.load(f"hf:{saved_instructblip(language)}?task={task}")


@pytest.fixture(params=LANGUAGES)
def language(request) -> str:
    return request.param


@pytest.fixture
def captioner(language: str):
    return _adapter(language, "caption")


@pytest.fixture
def answerer(language: str):
    return _adapter(language, "vqa")


def _processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(saved_instructblip())


def _pixels(adapter, shape: str) -> torch.Tensor:
    return adapter.scorer.preprocess(np.array(Image.open(llava_image(shape)).convert("RGB")))[None]


def _decoder_only(adapter) -> bool:
    return adapter.scorer.model.config.use_decoder_only_language_model


def test_the_prompt_is_the_processors_own(captioner, answerer) -> None:
    processor = _processor()
    expected = processor(images=Image.open(llava_image("wide")), text=DEFAULT_INSTRUCTION)
    scorer = captioner.scorer
    assert scorer.prompt_ids == tuple(expected["input_ids"][0])
    assert scorer.extra_ids["qformer_input_ids"] == tuple(expected["qformer_input_ids"][0])
    image_id = scorer.model.config.image_token_id
    placeholders = tuple(token for token in scorer.prompt_ids if token == image_id)
    assert scorer.prompt_ids[:QUERY_TOKENS] == (image_id,) * QUERY_TOKENS == placeholders
    bos = processor.tokenizer.bos_token_id
    assert scorer.prompt_ids[QUERY_TOKENS] == bos  # the tokenizer's own <s>, after the placeholders
    if _decoder_only(captioner):
        assert scorer.prefix == scorer.prompt_ids and scorer.text_argument == "input_ids"
    else:
        assert scorer.prefix == (scorer.model.generation_config.decoder_start_token_id,)
        assert scorer.text_argument == "decoder_input_ids"
    asked = processor(images=Image.open(llava_image("tall")), text=QUESTION)
    question = answerer.scorer.tokenize(QUESTION)
    assert question.ids == (*asked["input_ids"][0], -2, *asked["qformer_input_ids"][0])
    assert question.words == ("what", "color", "is", "the", "circle")


@pytest.mark.parametrize(("language", "shape"), SHAPED)
def test_teacher_forced_scores_equal_generate(captioner, shape: str) -> None:
    scorer = captioner.scorer
    pixels = _pixels(captioner, shape)
    qformer = torch.tensor([scorer.extra_ids["qformer_input_ids"]])
    with torch.no_grad():
        generated = scorer.model.generate(
            pixel_values=pixels, qformer_input_ids=qformer, input_ids=torch.tensor([scorer.prompt_ids]),
            max_new_tokens=scorer.max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        tokens = scorer.caption_of(generated.sequences[0].tolist())
        assert tokens == captioner.caption_tokens(llava_image(shape))
        forced = scorer.score(pixels, torch.tensor([tokens.ids])).logits
    expected = torch.log_softmax(torch.stack(generated.logits[: len(tokens.ids)], dim=1), dim=-1)
    assert forced.shape == expected.shape and len(tokens.ids) >= 1
    torch.testing.assert_close(torch.log_softmax(forced, dim=-1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("language", "shape"), SHAPED)
def test_the_map_is_the_vision_towers_patch_grid(captioner, shape: str) -> None:
    """Every image is resized whole to the processor's fixed size (32x32); the map is the
    vision tower's patch grid (input / patch = 4x4: its 1 + 16 tokens less the CLS), stretched
    back onto the original image."""
    processor = _processor()
    height, width = SHAPES[shape]
    expected = processor(images=Image.open(llava_image(shape)), return_tensors="pt")["pixel_values"]
    tensor = _pixels(captioner, shape)
    assert tensor.shape == expected.shape == (1, 3, 32, 32)
    model = captioner.scorer.model
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=tensor).last_hidden_state
    patch = model.config.vision_config.patch_size
    assert tokens.shape[1] == 1 + (32 // patch) ** 2 == 17
    assert captioner.layer_name == "vision_model.encoder.layers.0"
    explanation = captioner.explain(llava_image(shape), CAPTION, guided=False, contrast=False)
    assert explanation.grid_maps.shape == (7, 32 // patch, 32 // patch)
    assert explanation.heatmap(1).shape == (height, width) and np.abs(explanation.grid_maps).max() > 0


def test_every_word_at_once_equals_each_word_alone(captioner) -> None:
    check_words_at_once_equal_each_alone(captioner, llava_image("wide"), CAPTION)


def test_captions_generated_in_a_batch_equal_each_alone(captioner) -> None:
    check_generated_batch_equals_single(captioner, [llava_image("wide"), llava_image("tall")])


@pytest.mark.parametrize(("language", "shape"), [("llama", "wide"), ("llama", "tall"), ("t5", "tall")])
def test_a_score_that_reads_one_patch_lights_up_that_place(captioner, shape: str) -> None:
    """The tokens the Q-Former reads are zeroed but patch (1, 2) of the 4x4 grid (CLS too): the
    words' scores then depend on the hooked block's output at that patch only, so HiResCAM
    (gradient x activation per cell) is 0 elsewhere, and the full-size map peaks inside that
    patch's place in the original image."""
    model = captioner.scorer.model
    keep = torch.zeros(17, 1)
    keep[1 + 1 * 4 + 2] = 1.0

    def one_patch(module, args, output):  # post_layernorm also runs on the pooled CLS (B, C)
        return output * keep if output.dim() == 3 else output

    handle = model.vision_model.post_layernorm.register_forward_hook(one_patch)
    try:
        explanation = captioner.explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        handle.remove()
    check_one_cell_lit(explanation, (1, 2), (4, 4), SHAPES[shape])


@pytest.mark.parametrize(("language", "shape"), [("llama", "square"), ("t5", "tall")])
def test_answer_score_is_log_p_of_answer_and_end(answerer, shape: str) -> None:
    """y^c = sum of the answer tokens' log-probs plus the end token's, as ``generate`` scores them."""
    scorer = answerer.scorer
    pixels = _pixels(answerer, shape)
    question = scorer.tokenize(QUESTION)
    (prompt, qformer), = scorer._prompts(scorer.collate([question]))
    with torch.no_grad():
        generated = scorer.model.generate(
            pixel_values=pixels, qformer_input_ids=torch.tensor([qformer]), input_ids=torch.tensor([prompt]),
            max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        first = len(prompt) if _decoder_only(answerer) else 1
        answer = generated.sequences[0, first : first + 2].tolist()
        steps = torch.log_softmax(torch.cat(generated.logits), dim=-1)
        expected = steps[0, answer[0]] + steps[1, answer[1]] + steps[2, scorer.end_id]
        other = scorer.answer_tokens("blue")[1]
        scores = scorer.score(pixels, scorer.collate([question]), [[tuple(answer), other]])
    assert scores.shape == (1, 2)
    torch.testing.assert_close(scores[0, 0], expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # the generated answer is generate's continuation, up to the end token
        greedy = scorer.model.generate(
            pixel_values=pixels, qformer_input_ids=torch.tensor([qformer]), input_ids=torch.tensor([prompt]),
            max_new_tokens=scorer.max_new_tokens, min_new_tokens=1, do_sample=False,
        )[0, first:].tolist()
        ((text, ids),) = scorer.generate_answers(pixels, scorer.collate([question]), 1)[0]
    assert list(ids) == (greedy[: greedy.index(scorer.end_id)] if scorer.end_id in greedy else greedy)
    assert text == scorer.tokenizer.decode(ids, skip_special_tokens=True).strip() and ids


def test_vqa_answers_at_once_equal_each_alone_and_batch_equals_single(answerer) -> None:
    """Two questions of different lengths in one minibatch (the Q-Former's and the prompts'
    padding masked) give each item's own maps and scores."""
    model = answerer.scorer.model
    before = _state(model)
    images, questions = [llava_image("wide"), llava_image("tall")], [QUESTION, "is there a red square?"]
    both = answerer.explain_batch(images, questions, [["red", "blue"], ["red", "blue"]], guided=False)
    for n, (image, question) in enumerate(zip(images, questions, strict=True)):
        for k, answer in enumerate(["red", "blue"]):
            alone = answerer.explain(image, question, [answer], guided=False)
            np.testing.assert_allclose(alone.grid_maps[0], both[n].grid_maps[k], atol=1e-5, rtol=0)
            np.testing.assert_allclose(alone.scores[0], both[n].scores[k], atol=1e-5)
    assert both[0].grid_maps.shape == (2, 4, 4) and np.abs(both[0].grid_maps).max() > 0
    top = answerer.explain(images[0], QUESTION, guided=False, top=2)
    assert len(top.labels) == 2 and top.info["answer"] == top.labels[0] and top.info["probability"] > 0
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in before.items())


def test_query_token_layers_are_refused() -> None:
    for layer in ["qformer.encoder.layer.0", "language_projection", "language_model.model.layers.0"]:
        with pytest.raises(InputError, match="query tokens .* no place in the image; choose a vision tower layer") as error:
            mmcam.load(f"hf:{saved_instructblip()}", layer=layer)
        assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="no place in the image"):
        mmcam.load(f"hf:{saved_instructblip('t5')}?task=vqa", layer="qformer.encoder.layer.0")
    with pytest.raises(InputError, match="no patch-token layer"):
        mmcam.load(f"hf:{saved_instructblip()}", layer="vision_model.post_layernorm")


def test_the_instruction_is_an_option() -> None:
    captioner = mmcam.load(f"hf:{saved_instructblip()}?instruction=Say%20what%20you%20see.")
    expected = _processor()(images=Image.open(llava_image("square")), text="Say what you see.")
    assert captioner.scorer.prefix == tuple(expected["input_ids"][0])
    assert captioner.scorer.extra_ids["qformer_input_ids"] == tuple(expected["qformer_input_ids"][0])


def test_a_processor_without_query_tokens_is_refused(tmp_path) -> None:
    folder = tmp_path / "no-query-tokens"
    shutil.copytree(saved_instructblip(), folder)
    settings = json.loads((folder / "processor_config.json").read_text())
    settings.pop("num_query_tokens")
    (folder / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(InputError, match="num_query_tokens=None, the model reads 4"):
        mmcam.load(f"hf:{folder}")


def test_cli_caption_and_vqa(capsys) -> None:
    folder, image = saved_instructblip(), llava_image("wide")
    assert main(["caption", str(image), "--model", f"hf:{folder}", "--caption", "a red circle", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == CAPTION_KEYS and record["layer"] == "vision_model.encoder.layers.0"
    assert [word["word"] for word in record["words"]] == ["a", "red", "circle"]
    assert main(["vqa", str(image), QUESTION, "--model", f"hf:{folder}", "--json", "--answer", "red"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == VQA_KEYS and [item["answer"] for item in record["explanations"]] == ["red"]
    assert main(["caption", str(image), "--model", f"hf:{folder}", "--layer", "qformer.encoder.layer.0"]) != 0
    assert "no place in the image" in capsys.readouterr().err


def test_a_generated_answer_ends_at_any_end_token(tmp_path) -> None:
    """With two end tokens configured (the second: the token greedy decoding picks second), a
    generated answer is cut at the first of either, as a caption is. (InstructBLIP's ``generate``
    itself stops at its language model's own end token only.)"""
    scorer = _adapter("llama", "vqa").scorer
    pixels = _pixels(_adapter("llama", "vqa"), "wide")
    question = scorer.collate([scorer.tokenize(QUESTION)])
    ((_, greedy),) = scorer.generate_answers(pixels, question, 1)[0]
    assert len(greedy) >= 2
    folder = tmp_path / "two-ends"
    shutil.copytree(saved_instructblip(), folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    settings["eos_token_id"] = [settings["eos_token_id"], greedy[1]]
    (folder / "generation_config.json").write_text(json.dumps(settings))
    two_ends = mmcam.load(f"hf:{folder}?task=vqa").scorer
    ((text, ids),) = two_ends.generate_answers(pixels, question, 1)[0]
    assert ids == greedy[:1] and text == scorer.tokenizer.decode(greedy[:1]).strip()
