"""LLaVA's three layer choices (``--layer``) on a tiny random LLaVA (see ``vlm_fixtures``): the
vision tower block the language model reads (default), the projector's output, and a
language-model layer's hidden states at the image-token positions. Each: a score made to read one
patch lights up that patch's place; every word at once equals each word alone; batched answers
equal single ones; the map equals a hand computation; the model is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from conftest import assert_same_state, model_state
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.cli import main
from mmcam.errors import InputError
from vlm_fixtures import SHAPES, llava_image, saved_llava

CAPTION = "a red circle and a blue square"
QUESTIONS = ["what color is the circle?", "is there a red square?"]
TOWER, PROJECTOR, LANGUAGE = "model.vision_tower.encoder.layers.0", "model.multi_modal_projector", "model.language_model.layers.0"
LAYERS = [TOWER, PROJECTOR, LANGUAGE]
KEPT = (1, 2)  # the patch of the 4x4 grid that the masked models read


def _load(layer: str, variant: str = "default", task: str = "caption"):
    return mmcam.load(f"hf:{saved_llava(variant)}?task={task}", layer=layer)


def _pixels(adapter, shape: str) -> torch.Tensor:
    return adapter.scorer.preprocess(np.array(Image.open(llava_image(shape)).convert("RGB")))[None]


def _image_positions(adapter) -> list[int]:
    """Positions of the image placeholders in the captioner's prompt, read from its ids."""
    image_id = adapter.scorer.tokenizer.image_token_id
    return [position for position, token in enumerate(adapter.scorer.prefix) if token == image_id]


def _keep_one_patch(adapter, layer: str, variant: str):
    """A forward hook on ``layer`` that multiplies every image token but patch ``KEPT`` by 0: the
    tower's tokens (CLS first), the projector's (CLS first with the ``full`` strategy), or the
    language model's rows at the image placeholders (read from the prompt ids)."""
    cell = KEPT[0] * 4 + KEPT[1]
    module = adapter.scorer.model.get_submodule(layer)
    if layer == LANGUAGE:
        positions = _image_positions(adapter)
        cls = 1 if variant == "full" else 0
        assert len(positions) == cls + 16
        keep = torch.ones(len(adapter.scorer.prefix) + 16, 1)  # room for any caption
        keep[positions] = 0.0
        keep[positions[cls + cell]] = 1.0

        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            masked = hidden * keep[: hidden.shape[1]]
            return (masked, *output[1:]) if isinstance(output, tuple) else masked
    else:
        cls = 1 if layer == TOWER or variant == "full" else 0
        keep = torch.zeros(cls + 16, 1)
        keep[cls + cell] = 1.0

        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            return (hidden * keep, *output[1:]) if isinstance(output, tuple) else hidden * keep
    return module.register_forward_hook(hook)


@pytest.mark.parametrize(("layer", "variant", "shape"), [
    (TOWER, "default", "wide"), (PROJECTOR, "default", "wide"), (LANGUAGE, "default", "wide"),
    (TOWER, "default", "tall"), (PROJECTOR, "full", "tall"), (LANGUAGE, "full", "tall"), (LANGUAGE, "default", "square"),
])
def test_a_score_that_reads_one_patch_lights_up_that_place(layer: str, variant: str, shape: str) -> None:
    """Every image token of the hooked layer but patch (1, 2) is multiplied by 0, so the words'
    scores reach the layer's image tokens only there: HiResCAM (gradient x activation per cell) is
    0 in every other cell, and the full-size map peaks inside that patch's place in the original
    image. A layout that read the wrong tokens (CLS kept, placeholders off by one) would light up
    another cell."""
    adapter = _load(layer, variant)
    assert adapter.layer_name == layer
    handle = _keep_one_patch(adapter, layer, variant)
    try:
        explanation = adapter.explain(llava_image(shape), CAPTION, method="hirescam", guided=False, contrast=False)
    finally:
        handle.remove()
    assert explanation.grid_maps.shape == (7, 4, 4)
    both = np.abs(explanation.grid_maps) + np.abs(explanation.counterfactual_maps)
    assert (both[:, KEPT[0], KEPT[1]] > 0).all()
    both[:, KEPT[0], KEPT[1]] = 0
    assert not both.any()
    strongest = int(np.argmax(explanation.grid_maps[:, KEPT[0], KEPT[1]]))
    height, width = SHAPES[shape]
    x, y = explanation.peak_xy(strongest)
    assert KEPT[1] * width / 4 <= x < (KEPT[1] + 1) * width / 4 and KEPT[0] * height / 4 <= y < (KEPT[0] + 1) * height / 4


@pytest.mark.parametrize("layer", LAYERS)
def test_every_word_at_once_equals_each_word_alone_and_the_model_is_unchanged(layer: str) -> None:
    adapter = _load(layer)
    model = adapter.scorer.model
    with torch.no_grad():  # transformers installs its hidden-state recording hooks on a first forward
        adapter.scorer.score(_pixels(adapter, "wide"), torch.tensor([adapter.scorer.tokenize(CAPTION).ids]))
    before = model_state(model)
    together = adapter.explain(llava_image("wide"), CAPTION, guided=False, contrast=False)
    assert together.grid_maps.shape == (7, 4, 4) and np.abs(together.grid_maps).max() > 0
    for index in (1, 2, 6):
        alone = adapter.explain(llava_image("wide"), CAPTION, words=[index], guided=False, contrast=False)
        np.testing.assert_allclose(alone.grid_maps[0], together.grid_maps[index], atol=1e-6, rtol=0)
        np.testing.assert_allclose(alone.scores[0], together.scores[index], atol=1e-6)
    assert_same_state(before, model_state(model))
    assert model.config.text_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("layer", [PROJECTOR, LANGUAGE])
def test_answers_at_once_equal_each_alone_and_a_batch_equals_single_items(layer: str) -> None:
    """The language model reads one row per (image, candidate answer): a language-model layer's
    gradient for image n sums its rows; each answer's map is the one it gets alone."""
    adapter = _load(layer, task="vqa")
    images = [llava_image("wide"), llava_image("tall")]
    both = adapter.explain_batch(images, QUESTIONS, [["red", "blue square"], ["yes", "no"]], guided=False)
    for n, image in enumerate(images):
        for k, answer in enumerate([["red", "blue square"], ["yes", "no"]][n]):
            alone = adapter.explain(image, QUESTIONS[n], [answer], guided=False)
            np.testing.assert_allclose(alone.grid_maps[0], both[n].grid_maps[k], atol=1e-6, rtol=0)
            np.testing.assert_allclose(alone.scores[0], both[n].scores[k], atol=1e-6)
    assert both[0].grid_maps.shape == (2, 4, 4) and np.abs(both[1].grid_maps).max() > 0


def test_the_language_model_layer_map_equals_a_hand_computation() -> None:
    """HiResCAM of one word at ``model.language_model.layers.0`` = ReLU of the sum over channels
    of d log p(word) / d h * h at each image placeholder, taken here with a plain hook and
    torch.autograd.grad on the whole model's forward."""
    adapter = _load(LANGUAGE)
    scorer, model = adapter.scorer, adapter.scorer.model
    tokens = scorer.tokenize(CAPTION)
    word = 2  # "circle"
    captured = {}
    handle = model.get_submodule(LANGUAGE).register_forward_hook(lambda module, args, output: captured.update(hidden=output))
    try:
        prompt = torch.tensor([scorer.prefix])
        logits = model(pixel_values=_pixels(adapter, "tall"), input_ids=torch.cat([prompt, torch.tensor([tokens.ids])], dim=1)).logits
    finally:
        handle.remove()
    hidden = captured["hidden"][0] if isinstance(captured["hidden"], tuple) else captured["hidden"]
    row = len(scorer.prefix) - 1 + word
    score = torch.log_softmax(logits[0, row], dim=-1)[tokens.ids[word]]
    (gradient,) = torch.autograd.grad(score, hidden)
    positions = _image_positions(adapter)
    expected = (gradient[0, positions] * hidden[0, positions]).sum(dim=1).reshape(4, 4).detach()
    assert (expected < 0).any() and (expected > 0).any()
    explanation = adapter.explain(llava_image("tall"), CAPTION, words=[word], method="hirescam", guided=False, contrast=False)
    np.testing.assert_allclose(explanation.scores[0], float(score.detach()), atol=1e-5)
    np.testing.assert_allclose(explanation.grid_maps[0], expected.clamp(min=0).numpy(), atol=1e-7, rtol=1e-4)


def test_attention_to_the_image_tokens_is_the_models_own() -> None:
    """With ``attention`` the scores carry, per step, the language model's attention (eager)
    to the 16 image placeholders, mean over layers and heads; the logits are unchanged, and the
    model is back on its own attention implementation afterwards."""
    adapter = _load(TOWER)
    scorer, model = adapter.scorer, adapter.scorer.model
    ids = torch.tensor([scorer.tokenize(CAPTION).ids])
    pixels = _pixels(adapter, "square")
    with torch.no_grad():
        plain = scorer.score(pixels, ids)
        scorer.attention = True
        try:
            attended = scorer.score(pixels, ids)
        finally:
            scorer.attention = False
        model.set_attn_implementation("eager")
        try:
            output = model(pixel_values=pixels, input_ids=torch.cat([torch.tensor([scorer.prefix]), ids], dim=1), output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")
    assert plain.attention is None and model.config.text_config._attn_implementation == "sdpa"
    torch.testing.assert_close(attended.logits, plain.logits, atol=1e-5, rtol=0)
    weights = torch.stack(output.attentions)[:, 0].mean(dim=(0, 1))  # (L, L)
    first = len(scorer.prefix) - 1
    expected = weights[first : first + ids.shape[1]][:, _image_positions(adapter)].reshape(-1, 4, 4)
    assert attended.attention.shape == (1, ids.shape[1], 4, 4)
    torch.testing.assert_close(attended.attention[0], expected, atol=1e-6, rtol=0)
    assert ((attended.attention.sum(dim=(2, 3)) > 0) & (attended.attention.sum(dim=(2, 3)) < 1)).all()


def test_a_copy_of_the_adapter_explains_alike() -> None:
    """Deep copies (the sanity check's randomised model) and pickles keep the layout and start
    with no recorded rows; the copy's layout is its own scorer's placeholders."""
    import copy
    import pickle

    adapter = _load(LANGUAGE)
    copied = copy.deepcopy(adapter)
    assert copied.scorer.reshape is copied.scorer.placeholders and copied.scorer.reshape is not adapter.scorer.reshape
    assert pickle.loads(pickle.dumps(adapter.scorer.placeholders)) == adapter.scorer.placeholders
    original = adapter.explain(llava_image("square"), CAPTION, guided=False, contrast=False)
    again = copied.explain(llava_image("square"), CAPTION, guided=False, contrast=False)
    np.testing.assert_allclose(again.grid_maps, original.grid_maps, atol=1e-7, rtol=0)


def test_layers_without_image_tokens_on_the_grid_are_refused() -> None:
    with pytest.raises(InputError, match="reach no scored token"):
        _load("model.language_model.layers.1")
    with pytest.raises(InputError, match="reach no scored token"):
        _load("model.language_model.norm", task="vqa")
    with pytest.raises(InputError, match="model.multi_modal_projector"):
        _load("model.language_model.embed_tokens")
    with pytest.raises(InputError, match="unknown layer"):
        _load("model.language_model.layers.7")


def test_cli_caption_at_a_language_model_layer(capsys, tmp_path) -> None:
    import json

    argv = ["caption", str(llava_image("tall")), "--model", f"hf:{saved_llava()}", "--layer", LANGUAGE,
            "--caption", "a red circle", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert record["layer"] == LANGUAGE and [word["word"] for word in record["words"]] == ["a", "red", "circle"]
    height, width = SHAPES["tall"]
    assert np.load(record["words"][1]["heatmap"]).shape == (height, width)
