"""Florence-2 through ``mmcam.load("hf:FOLDER")``: the task prompt as the checkpoint's processor
writes it, maps on the DaViT's last (B, C, h, w) stage, the projector's image tokens or the BART
encoder's states at the image positions, teacher-forced scores equal to ``generate``'s, every
word from one pass, VQA refused; a tiny random checkpoint (see ``vlm_florence_fixtures``)."""

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
from mmcam.cli import main
from mmcam.errors import InputError
from test_hf_cli import CAPTION_KEYS
from vlm_checks import check_generated_batch_equals_single, check_one_cell_lit, check_words_at_once_equal_each_alone
from vlm_fixtures import SHAPES, llava_image
from vlm_florence_fixtures import GRID, saved_florence

CAPTION = "a red circle and a blue square"
PROJECTOR = "model.multi_modal_projector"
ENCODER = "model.language_model.encoder.layers.0"


@functools.cache
def _captioner(layer: str | None = None):
    return mmcam.load(f"hf:{saved_florence()}", layer=layer)


@functools.cache
def _processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(saved_florence())


def _pixels(adapter, shape: str) -> torch.Tensor:
    return adapter.scorer.preprocess(np.array(Image.open(llava_image(shape)).convert("RGB")))[None]


def test_the_prompt_is_the_processors_own() -> None:
    scorer, processor = _captioner().scorer, _processor()
    expected = processor(images=Image.open(llava_image("wide")), text="<CAPTION>")["input_ids"][0]
    assert scorer.prompt_ids == tuple(expected)
    image_id = processor.image_token_id
    count = 1 + GRID[0] * GRID[1]  # the projector's mean token, then one per position of the last map
    assert processor.num_image_tokens == count and scorer.prompt_ids[:count] == (image_id,) * count
    tokenizer = processor.tokenizer
    assert scorer.prompt_ids[count] == tokenizer.bos_token_id and scorer.prompt_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(scorer.prompt_ids[count + 1 : -1]) == "What does the image describe?"
    generation = scorer.model.generation_config
    assert scorer.prefix == (generation.decoder_start_token_id, generation.forced_bos_token_id)
    detailed = mmcam.load(f"hf:{saved_florence()}?instruction=%3CMORE_DETAILED_CAPTION%3E").scorer
    expected = processor(images=Image.open(llava_image("tall")), text="<MORE_DETAILED_CAPTION>")["input_ids"][0]
    assert detailed.prompt_ids == tuple(expected)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_teacher_forced_scores_equal_generate(shape: str) -> None:
    captioner = _captioner()
    scorer = captioner.scorer
    pixels = _pixels(captioner, shape)
    with torch.no_grad():
        generated = scorer.model.generate(
            input_ids=torch.tensor([scorer.prompt_ids]), pixel_values=pixels, max_new_tokens=scorer.max_new_tokens,
            do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
        tokens = scorer.caption_of(generated.sequences[0].tolist())
        assert tokens == captioner.caption_tokens(llava_image(shape))
        forced = scorer.score(pixels, torch.tensor([tokens.ids])).logits
    first = len(scorer.prefix) - 1  # generate's first step picks the forced <s>
    expected = torch.log_softmax(torch.stack(generated.logits[first : first + len(tokens.ids)], dim=1), dim=-1)
    assert forced.shape == expected.shape and len(tokens.ids) >= 1
    torch.testing.assert_close(torch.log_softmax(forced, dim=-1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_maps_lie_on_the_image_token_layout(shape: str) -> None:
    """Every image is squashed to the processor's 32x32 (as the processor does); the last stage's
    map is 4x4, the projector's 1 + 16 tokens and the encoder's image positions lie on it, the
    first stage's map is 8x8; each map is stretched back onto the original image."""
    height, width = SHAPES[shape]
    expected = _processor().image_processor(Image.open(llava_image(shape)), return_tensors="pt")["pixel_values"]
    captioner = _captioner()
    tensor = _pixels(captioner, shape)
    assert tensor.shape == expected.shape == (1, 3, 32, 32)
    assert (tensor - expected).abs().mean() < 0.05  # the same squash, up to the resampling filter
    with torch.no_grad():
        last = captioner.scorer.model.model.vision_tower(tensor).last_hidden_state
    assert last.shape[-2:] == GRID and _processor().num_image_tokens == 1 + last.shape[-2] * last.shape[-1]
    assert captioner.layer_name == "model.vision_tower.blocks.1.0"
    for layer, grid in [(None, GRID), (PROJECTOR, GRID), (ENCODER, GRID), ("model.vision_tower.convs.0", (8, 8))]:
        explanation = _captioner(layer).explain(llava_image(shape), CAPTION, guided=False, contrast=False)
        assert explanation.grid_maps.shape == (7, *grid) and np.abs(explanation.grid_maps).max() > 0
        assert explanation.heatmap(1).shape == (height, width)


@pytest.mark.parametrize("layer", [None, ENCODER])
def test_every_word_at_once_equals_each_word_alone(layer: str | None) -> None:
    check_words_at_once_equal_each_alone(_captioner(layer), llava_image("wide"), CAPTION)


def test_captions_generated_in_a_batch_equal_each_alone() -> None:
    check_generated_batch_equals_single(_captioner(), [llava_image("wide"), llava_image("tall")])


@pytest.mark.parametrize("layer", [PROJECTOR, ENCODER])
def test_token_layers_agree_with_a_hand_computed_hirescam(layer: str) -> None:
    """HiResCAM from the layer's image tokens (positions 1..16: the mean token and the prompt
    left out), computed here with one backward pass per word, equals mmcam's."""
    captioner = _captioner(layer)
    scorer = captioner.scorer
    tokens = scorer.tokenize(CAPTION)
    seen = {}
    handle = scorer.model.get_submodule(layer).register_forward_hook(lambda module, args, output: seen.update(out=output))
    try:
        logprobs = torch.log_softmax(scorer.score(_pixels(captioner, "tall"), torch.tensor([tokens.ids])).logits[0], dim=-1)
    finally:
        handle.remove()
    states = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    expected = []
    for span in tokens.spans:
        word = sum(logprobs[t, tokens.ids[t]] for t in span)
        (gradient,) = torch.autograd.grad(word, states, retain_graph=True)
        cells = torch.relu((gradient * states)[0, 1 : 1 + GRID[0] * GRID[1]].sum(dim=-1))
        expected.append(cells.reshape(GRID).detach().numpy())
    explanation = captioner.explain(llava_image("tall"), CAPTION, method="hirescam", guided=False, contrast=False)
    assert np.max(expected) > 0
    np.testing.assert_allclose(explanation.grid_maps, np.stack(expected), rtol=1e-4, atol=1e-6 * np.max(expected))


@pytest.mark.parametrize("shape", ["wide", "tall"])
def test_a_score_that_reads_one_patch_lights_up_that_place(shape: str) -> None:
    """The projector's tokens are zeroed but the one of position (1, 2) of the 4x4 map (its mean
    token too): the words' scores then depend on the last block's output there only, so HiResCAM
    is 0 elsewhere, and the full-size map peaks inside that place in the original image."""
    captioner = _captioner()
    model = captioner.scorer.model
    keep = torch.zeros(1 + GRID[0] * GRID[1], 1)
    keep[1 + 1 * GRID[1] + 2] = 1.0
    handle = model.get_submodule(PROJECTOR).register_forward_hook(lambda module, args, output: output * keep)
    try:
        explanation = captioner.explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        handle.remove()
    check_one_cell_lit(explanation, (1, 2), GRID, SHAPES[shape])


def test_clear_errors(tmp_path) -> None:
    folder = saved_florence()
    with pytest.raises(InputError, match="no question-answering task .*<CAPTION>.*'mmcam caption'") as error:
        mmcam.load(f"hf:{folder}?task=vqa")
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="not a caption task .* choose one of: <OCR>, <CAPTION>"):
        mmcam.load(f"hf:{folder}?instruction=%3COD%3E")
    with pytest.raises(InputError, match="no layout on the image .* model.vision_tower.blocks.1.0"):
        mmcam.load(f"hf:{folder}", layer="model.language_model.decoder.layers.0")
    broken = tmp_path / "florence"
    shutil.copytree(folder, broken)
    settings = json.loads((broken / "processor_config.json").read_text())
    settings["image_processor"]["image_seq_length"] = 10
    (broken / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(InputError, match="image_seq_length=10, but a 32x32 input gives the language model 1 \\+ 4x4 = 17"):
        mmcam.load(f"hf:{broken}")


def test_cli_caption(capsys) -> None:
    folder, image = saved_florence(), llava_image("wide")
    assert main(["caption", str(image), "--model", f"hf:{folder}", "--caption", "a red circle", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == CAPTION_KEYS and record["layer"] == "model.vision_tower.blocks.1.0"
    assert [word["word"] for word in record["words"]] == ["a", "red", "circle"]
    assert main(["vqa", str(image), "what color is the circle?", "--model", f"hf:{folder}"]) != 0
    assert "no question-answering task" in capsys.readouterr().err
