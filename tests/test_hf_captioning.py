"""transformers captioners (BLIP, BLIP-2, GIT, VisionEncoderDecoder with ConvNeXt / ResNet / ViT /
DeiT / Swin encoders and GPT-2 / BERT decoders), saved as tiny checkpoints and loaded back
through ``mmcam.load``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_state, model_state
from hf_fixtures import CAPTIONERS, adapter, image_file, one_thread, saved  # noqa: F401 (autouse fixture)
from mmcam.adapters.captioning import CaptionAdapter, CaptionScorer
from mmcam.io import load_image

DEFAULT_LAYERS = {
    "blip": "vision_model.encoder.layers.0",
    "blip2": "vision_model.encoder.layers.0",
    "git": "git.image_encoder.vision_model.encoder.layers.0",
    "ved-convnext-gpt2": "encoder.encoder.stages.1",
    "ved-resnet-bert": "encoder.encoder.stages.1",
    "ved-vit-bert": "encoder.layers.0",
    "ved-deit-bert": "encoder.layers.0",  # two leading tokens dropped by the token grid
    "ved-swin-bert": "encoder.encoder.layers.1",  # its last stage: (B, 4*4, C), no CLS token
}
CAPTION = "a red triangle and a green circle"  # 7 words
GENERATED_TOKENS = 6


def _pixels(scorer) -> torch.Tensor:
    return scorer.preprocess(load_image(image_file()).pixels)[None]


@pytest.mark.parametrize("family", CAPTIONERS)
def test_loads_as_a_caption_adapter_on_the_default_layer(family) -> None:
    loaded = adapter(family)
    assert isinstance(loaded, CaptionAdapter) and loaded.kind == "caption"
    assert isinstance(loaded.scorer, CaptionScorer)
    assert loaded.layer_name == DEFAULT_LAYERS[family]
    assert loaded.name == f"hf:{saved(family)}"


@pytest.mark.parametrize("family", CAPTIONERS)
def test_all_words_at_once_equal_one_call_per_word(family) -> None:
    loaded = adapter(family)
    together = loaded.explain(image_file(), CAPTION, guided=True)
    assert together.labels == CAPTION.split()
    assert together.heatmaps.shape == (7, 40, 56)  # the original image's size, not the model's 32x32
    for position in range(7):
        alone = loaded.explain(image_file(), CAPTION, words=[position], guided=True)
        np.testing.assert_allclose(alone.heatmaps[0], together.heatmaps[position], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(alone.guided[0], together.guided[position], rtol=1e-4, atol=1e-7)
        assert alone.info["logprobs"][0] == pytest.approx(together.info["logprobs"][position], abs=1e-6)
    distinct = {tuple(np.round(heatmap, 4).ravel()) for heatmap in together.heatmaps}
    assert len(distinct) >= 4


@pytest.mark.parametrize("family", CAPTIONERS)
def test_a_word_scores_the_sum_of_its_subword_tokens(family) -> None:
    loaded = adapter(family)
    tokens = loaded.scorer.tokenize(CAPTION)
    assert any(len(span) > 1 for span in tokens.spans)  # "tri ##angle" (WordPiece), "Ġ gre en" (BPE)
    ids = torch.tensor([tokens.ids])
    with torch.no_grad():
        logprobs = loaded.scorer.score(_pixels(loaded.scorer), ids).logprobs[0]
    explanation = loaded.explain(image_file(), CAPTION, guided=False, contrast=False)
    for word, span in enumerate(tokens.spans):
        expected = sum(float(logprobs[p, tokens.ids[p]]) for p in span)
        assert explanation.info["logprobs"][word] == pytest.approx(expected, abs=1e-5)
        assert explanation.scores[word] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("family", CAPTIONERS)
def test_teacher_forced_scores_equal_the_scores_generate_reports(family, monkeypatch) -> None:
    loaded = adapter(family)
    scorer = loaded.scorer
    images = _pixels(scorer)
    with torch.no_grad():
        output = scorer.model.generate(
            pixel_values=images, max_new_tokens=GENERATED_TOKENS, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )
    sequence = output.sequences[0].tolist()
    start = len(scorer.prefix)
    generated = [float(torch.log_softmax(step[0], -1)[sequence[start + k]]) for k, step in enumerate(output.logits)]
    tokens = scorer.caption_of(sequence)
    assert tokens.words, "the tiny model should generate some words"
    with torch.no_grad():
        teacher = scorer.score(images, torch.tensor([tokens.ids])).logprobs[0]
    forced = [float(teacher[t, token]) for t, token in enumerate(tokens.ids)]
    np.testing.assert_allclose(forced, generated[: len(tokens.ids)], atol=1e-5)

    monkeypatch.setattr(scorer, "max_new_tokens", GENERATED_TOKENS)
    explanation = loaded.explain(image_file(), guided=False, contrast=False)  # no caption: generate
    assert explanation.labels == list(tokens.words)
    per_word = [sum(generated[p] for p in span) for span in tokens.spans]
    np.testing.assert_allclose(explanation.info["logprobs"], per_word, atol=1e-5)


@pytest.mark.parametrize("family", CAPTIONERS)
def test_explaining_leaves_the_model_unchanged(family) -> None:
    loaded = adapter(family)
    model = loaded.scorer.model.train()
    try:
        before = model_state(model)
        rng = torch.random.get_rng_state()
        loaded.explain(image_file(), "a red circle")
        loaded.caption_tokens(image_file())
        assert_same_state(before, model_state(model))
        assert torch.equal(rng, torch.random.get_rng_state())
    finally:
        model.eval()


@pytest.mark.parametrize("family", ["ved-convnext-gpt2", "ved-resnet-bert"])
def test_a_saved_cnn_encoder_decoder_loads_back_with_its_weights(family) -> None:
    from mmcam.adapters.hf import ConvNextTokenEncoder, ResNetTokenEncoder

    model = adapter(family).scorer.model
    assert isinstance(model.encoder, (ConvNextTokenEncoder, ResNetTokenEncoder))
    saved_weights = load_file(str(saved(family) / "model.safetensors"))
    state = model.state_dict()
    assert set(saved_weights) <= set(state)
    for name, value in saved_weights.items():
        assert torch.equal(state[name], value), name
