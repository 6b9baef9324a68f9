"""PaliGemma and Gemma 3 through ``mmcam.load("hf:FOLDER")``: prompts and ``token_type_ids`` as the
checkpoints' processors build them, teacher-forced scores equal to ``generate``'s, maps on the
processor's image-token layout (Gemma 3's projector pools the patch grid), every word from one
pass, on tiny random models saved offline (see ``vlm_paligemma_fixtures``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from conftest import assert_same_state, model_state
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.cli import main
from mmcam.errors import InputError
from test_hf_cli import CAPTION_KEYS
from vlm_fixtures import SHAPES, llava_image
from vlm_paligemma_fixtures import saved_gemma3, saved_paligemma

CAPTION = "a red circle and a blue square"
QUESTION = "what color is the circle?"
FOLDERS = {"paligemma": saved_paligemma, "gemma3": saved_gemma3}


@pytest.fixture(scope="module", params=list(FOLDERS))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def captioners() -> dict:
    return {name: mmcam.load(f"hf:{saved()}") for name, saved in FOLDERS.items()}


@pytest.fixture(scope="module")
def answerers() -> dict:
    return {name: mmcam.load(f"hf:{saved()}?task=vqa") for name, saved in FOLDERS.items()}


@pytest.fixture(scope="module")
def processors() -> dict:
    from transformers import AutoProcessor

    return {name: AutoProcessor.from_pretrained(saved()) for name, saved in FOLDERS.items()}


def _pixels(adapter, shape: str) -> torch.Tensor:
    return adapter.scorer.preprocess(np.array(Image.open(llava_image(shape)).convert("RGB")))[None]


def _processed(processor, family: str, text: str, shape: str = "wide", **options) -> dict:
    """What the checkpoint's own processor gives the model for ``text`` (PaliGemma: the prefix
    as its processor reads it; Gemma 3: the user turn through its chat template)."""
    image = Image.open(llava_image(shape))
    if family == "paligemma":
        return processor(images=image, text="<image>" + text, return_tensors="pt", **options)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(
        conversation, images=[image], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def test_prompts_and_token_types_are_the_processors_own(captioners, answerers, processors) -> None:
    # PaliGemma: <image> x 16, bos, "caption en", newline; its processor's suffix= gives the
    # prefix-LM token types of prompt + caption (0, then 1)
    paligemma, processor = captioners["paligemma"].scorer, processors["paligemma"]
    expected = _processed(processor, "paligemma", "caption en", suffix="a red circle")
    caption = paligemma.tokenize("a red circle").ids
    assert expected["input_ids"][0].tolist() == [*paligemma.prefix, *caption, processor.tokenizer.eos_token_id]
    assert paligemma.prefix.count(processor.image_token_id) == processor.image_seq_length == 16
    types = paligemma.text_inputs(expected["input_ids"])["token_type_ids"]
    assert torch.equal(types, expected["token_type_ids"]) and types.sum() == len(caption) + 1
    asked = _processed(processor, "paligemma", "answer en " + QUESTION)
    assert answerers["paligemma"].scorer.tokenize(QUESTION).ids == tuple(asked["input_ids"][0].tolist())
    # Gemma 3: the chat template's user turn; token types 1 on the image tokens only
    gemma3, processor = captioners["gemma3"].scorer, processors["gemma3"]
    expected = _processed(processor, "gemma3", "Describe the image.")
    assert gemma3.prefix == tuple(expected["input_ids"][0].tolist())
    assert torch.equal(gemma3.text_inputs(expected["input_ids"])["token_type_ids"], expected["token_type_ids"])
    assert expected["token_type_ids"].sum() == 4 and gemma3.prefix.count(processor.tokenizer.boi_token_id) == 1
    question = answerers["gemma3"].scorer.tokenize(QUESTION)
    assert question.ids == tuple(_processed(processor, "gemma3", QUESTION)["input_ids"][0].tolist())
    assert question.words == ("what", "color", "is", "the", "circle")
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert answerers["gemma3"].scorer.end_id == end_of_turn  # the template closes an answer with it


@pytest.mark.parametrize("shape", list(SHAPES))
def test_teacher_forced_scores_equal_generate(captioners, processors, family: str, shape: str) -> None:
    scorer = captioners[family].scorer
    pixels = _pixels(captioners[family], shape)
    instruction = "caption en" if family == "paligemma" else "Describe the image."
    inputs = _processed(processors[family], family, instruction, shape)
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"], pixel_values=pixels,
            max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        tokens = scorer.caption_of(generated.sequences[0].tolist())
        forced = scorer.score(pixels, torch.tensor([tokens.ids])).logits
    expected = torch.log_softmax(torch.stack(generated.logits[: len(tokens.ids)], dim=1), dim=-1)
    assert forced.shape == expected.shape and len(tokens.ids) >= 2
    torch.testing.assert_close(torch.log_softmax(forced, dim=-1), expected, atol=1e-5, rtol=0)


def test_paligemma2_scores_equal_generate() -> None:
    """PaliGemma 2 (a Gemma 2 language model: soft-capped logits, a sliding-window layer shorter
    than the prompt): teacher-forced scores equal ``generate``'s too."""
    captioner = mmcam.load(f"hf:{saved_paligemma('gemma2')}")
    scorer = captioner.scorer
    pixels = _pixels(captioner, "tall")
    prompt = torch.tensor([scorer.prefix])
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=prompt, token_type_ids=torch.zeros_like(prompt), pixel_values=pixels, max_new_tokens=8,
            do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        tokens = scorer.caption_of(generated.sequences[0].tolist())
        forced = scorer.score(pixels, torch.tensor([tokens.ids])).logits
    expected = torch.log_softmax(torch.stack(generated.logits[: len(tokens.ids)], dim=1), dim=-1)
    assert forced.shape == expected.shape and len(tokens.ids) >= 2
    torch.testing.assert_close(torch.log_softmax(forced, dim=-1), expected, atol=1e-5, rtol=0)
    assert captioner.explain(llava_image("tall"), "a red circle", guided=False).grid_maps.shape == (3, 4, 4)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_map_shape_is_the_processors_image_token_layout(captioners, processors, shape: str) -> None:
    """PaliGemma: one image token per patch, 16 = 4x4; Gemma 3: the tower's 8x8 patch grid, and
    at the projector the 2x2 grid of its 4 image tokens (each a 4x4 pool of patches)."""
    height, width = SHAPES[shape]
    tokens = {
        family: int((_processed(processors[family], family, "x", shape)["input_ids"] == image_id).sum())
        for family, image_id in (("paligemma", processors["paligemma"].image_token_id),
                                 ("gemma3", processors["gemma3"].tokenizer.image_token_id))
    }
    assert tokens == {"paligemma": 16, "gemma3": 4}
    paligemma = captioners["paligemma"].explain(llava_image(shape), "a red circle", guided=False)
    assert paligemma.grid_maps.shape == (3, 4, 4) and paligemma.heatmap(0).shape == (height, width)
    gemma3 = captioners["gemma3"].explain(llava_image(shape), "a red circle", guided=False)
    assert gemma3.grid_maps.shape == (3, 8, 8) and gemma3.heatmap(2).shape == (height, width)
    projector = mmcam.load(f"hf:{saved_gemma3()}", layer="model.multi_modal_projector")
    pooled = projector.explain(llava_image(shape), "a red circle", guided=False)
    assert pooled.grid_maps.shape == (3, 2, 2) and pooled.heatmap(1).shape == (height, width)
    np.testing.assert_allclose(pooled.scores, gemma3.scores, atol=1e-6)
    for family, grid in (("paligemma", (4, 4)), ("gemma3", (2, 2))):  # LM layer 0 at the image tokens
        language = mmcam.load(f"hf:{FOLDERS[family]()}", layer="model.language_model.layers.0")
        assert language.explain(llava_image(shape), "a red circle", guided=False).grid_maps.shape == (3, *grid)


def test_every_word_at_once_equals_each_word_alone(captioners, family: str) -> None:
    captioner = captioners[family]
    model = captioner.scorer.model
    with torch.no_grad():  # transformers installs its hidden-state recording hooks on a first forward
        captioner.scorer.score(_pixels(captioner, "tall"), torch.tensor([captioner.scorer.tokenize(CAPTION).ids]))
    before = model_state(model)
    together = captioner.explain(llava_image("tall"), CAPTION, guided=False, contrast=False)
    assert together.labels == CAPTION.split() and np.abs(together.grid_maps).max() > 0
    for index in (0, 2, 5):
        alone = captioner.explain(llava_image("tall"), CAPTION, words=[index], guided=False, contrast=False)
        np.testing.assert_allclose(alone.grid_maps[0], together.grid_maps[index], atol=1e-5, rtol=0)
        np.testing.assert_allclose(alone.scores[0], together.scores[index], atol=1e-5)
    # a minibatch: captions of other lengths (padded after the caption: PaliGemma's causal part,
    # Gemma 3's text) and one generated in the same batch equal each alone
    images = [llava_image("tall"), llava_image("wide"), llava_image("square")]
    batch = captioner.explain_batch(images, [CAPTION, "a blue square", None], guided=False, contrast=False)
    for image, caption, explained in zip(images, [CAPTION, "a blue square", None], batch, strict=True):
        alone = captioner.explain(image, caption, guided=False, contrast=False)
        assert alone.labels == explained.labels
        np.testing.assert_allclose(explained.grid_maps, alone.grid_maps, atol=1e-5, rtol=0)
        np.testing.assert_allclose(explained.scores, alone.scores, atol=1e-5)
    assert_same_state(before, model_state(model))


def test_the_default_layer_is_the_towers_output_not_the_block_before_its_norm(captioners) -> None:
    """The last block's output feeds the tower's final layer norm, which ignores each token's
    scale: there the gradient is orthogonal to the activation at every patch, so HiResCAM is ~0
    (1e-9 here, against 1e-4 at the norm's output, the default)."""
    captioner = captioners["paligemma"]
    assert captioner.layer_name == "model.vision_tower.post_layernorm"
    block = mmcam.load(f"hf:{saved_paligemma()}", layer="model.vision_tower.encoder.layers.1")
    options = dict(method="hirescam", guided=False, contrast=False)
    default = captioner.explain(llava_image("wide"), CAPTION, **options)
    blind = block.explain(llava_image("wide"), CAPTION, **options)
    strength = [np.abs(e.grid_maps).sum() + np.abs(e.counterfactual_maps).sum() for e in (default, blind)]
    np.testing.assert_allclose(blind.scores, default.scores, atol=1e-6)
    assert strength[1] < 1e-3 * strength[0]


def _keep_one(module: torch.nn.Module, index: int, count: int):
    """A forward hook zeroing every image token of ``module``'s (B, count, C) output but ``index``."""
    keep = torch.zeros(count, 1)
    keep[index] = 1.0
    return module.register_forward_hook(lambda _module, _args, output: output * keep)


@pytest.mark.parametrize("shape", ["wide", "tall"])
def test_a_score_that_reads_one_patch_lights_up_that_place(captioners, shape: str) -> None:
    """PaliGemma: the projector's output is zeroed but for patch (1, 2) of the 4x4 grid, so the
    words depend on the tower's output there only: HiResCAM is 0 elsewhere and the full-size map
    peaks inside that patch's place in the original image. Gemma 3: the pooled tokens are zeroed
    but for token (0, 1) of the 2x2 grid: the tower's map lives in the 4x4 patches that token
    pools (rows 0-3, columns 4-7 of the 8x8 grid), the projector's in its one cell."""
    height, width = SHAPES[shape]
    model = captioners["paligemma"].scorer.model
    handle = _keep_one(model.model.multi_modal_projector, 1 * 4 + 2, 16)
    try:
        patch = captioners["paligemma"].explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        handle.remove()
    maps = np.abs(patch.grid_maps) + np.abs(patch.counterfactual_maps)
    assert (maps[:, 1, 2] > 0).all()
    maps[:, 1, 2] = 0
    assert not maps.any()
    strongest = int(np.argmax(patch.grid_maps[:, 1, 2]))
    assert patch.grid_maps[strongest, 1, 2] > 0
    x, y = patch.peak_xy(strongest)
    assert 2 * width / 4 <= x < 3 * width / 4 and height / 4 <= y < 2 * height / 4

    model = captioners["gemma3"].scorer.model
    projector = mmcam.load(f"hf:{saved_gemma3()}", layer="model.multi_modal_projector")
    for adapter in (captioners["gemma3"], projector):
        handle = _keep_one(adapter.scorer.model.model.multi_modal_projector.mm_soft_emb_norm, 1, 4)
        try:
            explanation = adapter.explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
        finally:
            handle.remove()
        maps = np.abs(explanation.grid_maps) + np.abs(explanation.counterfactual_maps)
        cells = (slice(None), slice(0, 4), slice(4, 8)) if maps.shape[1] == 8 else (slice(None), slice(0, 1), slice(1, 2))
        strongest = int(np.argmax(explanation.grid_maps[cells].reshape(len(maps), -1).max(axis=1)))
        assert maps[cells].min() > 0 or maps.shape[1] == 8  # pooled patches: a few may read 0
        assert maps[cells].sum() > 0
        maps[cells] = 0
        assert not maps.any()
        x, y = explanation.peak_xy(strongest)
        assert width / 2 <= x < width and 0 <= y < height / 2


def test_answer_score_is_log_p_of_answer_and_end(answerers, processors, family: str) -> None:
    """y^c = the answer tokens' log-probs plus the end token's, as ``generate`` scores them (with
    the processor's token types); answers of a batch equal each alone, at the default layer and
    at language-model layer 0 (one row per candidate answer, gradients summed per image); the
    model is unchanged."""
    scorer = answerers[family].scorer
    pixels = _pixels(answerers[family], "square")
    question = scorer.tokenize(QUESTION)
    text = ("answer en " + QUESTION) if family == "paligemma" else QUESTION
    types = _processed(processors[family], family, text, "square")["token_type_ids"]
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=torch.tensor([question.ids]), token_type_ids=types, pixel_values=pixels, max_new_tokens=3,
            min_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        answer = generated.sequences[0, len(question.ids) : len(question.ids) + 2].tolist()
        steps = torch.log_softmax(torch.cat(generated.logits), dim=-1)
        expected = steps[0, answer[0]] + steps[1, answer[1]] + steps[2, scorer.end_id]
        scores = scorer.score(pixels, scorer.collate([question]), [[tuple(answer), scorer.answer_tokens("blue")[1]]])
    torch.testing.assert_close(scores[0, 0], expected, atol=1e-5, rtol=0)
    model = scorer.model
    before = model_state(model)
    images, questions = [llava_image("wide"), llava_image("wide")], [QUESTION, "is there a red square?"]
    language = mmcam.load(f"hf:{FOLDERS[family]()}?task=vqa", layer="model.language_model.layers.0")
    for adapter in (answerers[family], language):
        both = adapter.explain_batch(images, questions, [["red", "blue"], ["yes", "blue"]], guided=False)
        for n, question_text in enumerate(questions):
            alone = adapter.explain(images[n], question_text, ["blue"], guided=False)
            np.testing.assert_allclose(alone.grid_maps[0], both[n].grid_maps[1], atol=1e-5, rtol=0)
            np.testing.assert_allclose(alone.scores[0], both[n].scores[1], atol=1e-5)
        assert np.abs(both[0].grid_maps).max() > 0
    assert_same_state(before, model_state(model))


def test_a_generated_answer_ends_at_any_end_token(answerers, processors) -> None:
    """Gemma 3 stops at ``<eos>`` or ``<end_of_turn>``: an answer the model closes with ``<eos>``
    (made likely here from its second token on) holds neither, and is scored closed by
    ``<end_of_turn>``."""
    adapter = answerers["gemma3"]
    model, eos = adapter.scorer.model, processors["gemma3"].tokenizer.eos_token_id
    boost = torch.zeros(model.config.text_config.vocab_size)
    boost[eos] = 100.0
    handle = model.lm_head.register_forward_hook(lambda _module, _args, output: output + boost)
    question = adapter.scorer.collate([adapter.scorer.tokenize(QUESTION)])
    try:
        ((text, ids),) = adapter.scorer.generate_answers(_pixels(adapter, "square"), question, 1)[0]
        explanation = adapter.explain(llava_image("square"), QUESTION, guided=False)
    finally:
        handle.remove()
    assert len(ids) == 1 and not set(ids) & {eos, adapter.scorer.end_id}
    assert explanation.labels == [text] == [processors["gemma3"].tokenizer.decode(ids).strip()]


def test_clear_errors() -> None:
    with pytest.raises(InputError, match="no chat template"):
        mmcam.load(f"hf:{saved_gemma3('no-template')}")
    with pytest.raises(InputError, match="image_seq_length"):
        mmcam.load(f"hf:{saved_paligemma('no-seq-length')}")
    with pytest.raises(InputError, match="vision tower .*, at the projector's output .* or in a language-model layer"):
        mmcam.load(f"hf:{saved_paligemma()}", layer="lm_head")
    with pytest.raises(InputError, match="reach no scored token"):
        mmcam.load(f"hf:{saved_gemma3()}?task=vqa", layer="model.language_model.layers.1")


def test_caption_cli_json(capsys, tmp_path) -> None:
    folder, image = saved_gemma3(), llava_image("wide")
    argv = ["caption", str(image), "--model", f"hf:{folder}", "--caption", "a red circle", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert set(record) == CAPTION_KEYS and record["layer"] == "model.vision_tower.post_layernorm"
    assert [word["word"] for word in record["words"]] == ["a", "red", "circle"]
    assert np.load(record["words"][1]["heatmap"]).shape == SHAPES["wide"]
