"""Word-by-word explanations of a captioner: batching, teacher forcing, errors (tiny random model)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import mmcam
from conftest import assert_same_state, model_state
from mmcam.adapters.captioning import CaptionAdapter, CaptionScorer
from mmcam.adapters.shapes_captioner import ShapesCaptionerScorer
from mmcam.data.scenes import make_split
from mmcam.errors import InputError
from mmcam.models.captioner import CaptionerConfig, ShapesCaptioner
from mmcam.targets import CaptionScores


@pytest.fixture(scope="module")
def adapter() -> CaptionAdapter:
    torch.manual_seed(0)
    model = ShapesCaptioner(CaptionerConfig(channels=(8, 8, 8, 8, 16), hidden_dim=32, attention_dim=16, embed_dim=16)).eval()
    return CaptionAdapter(ShapesCaptionerScorer(model), default_method="gradcam")


@pytest.fixture(scope="module")
def scene():
    return make_split("test", 1)[0]


def test_scorer_satisfies_the_public_protocol(adapter) -> None:
    assert isinstance(adapter.scorer, CaptionScorer)


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_all_words_at_once_equal_one_call_per_word(adapter, scene, method) -> None:
    caption = "a red circle and a blue triangle"
    together = adapter.explain(scene.image, caption, method=method, guided=True)
    assert together.heatmaps.shape == (7, 128, 128)
    for position in range(7):
        alone = adapter.explain(scene.image, caption, words=[position], method=method, guided=True)
        np.testing.assert_allclose(alone.heatmaps[0], together.heatmaps[position], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(alone.guided[0], together.guided[position], rtol=1e-4, atol=1e-7)
        assert alone.info["logprobs"][0] == pytest.approx(together.info["logprobs"][position], abs=1e-6)
    # each map's y is its own word's log-prob, read off the model's forward directly
    model = adapter.scorer.model
    ids = model.encode_words(caption.split())
    with torch.no_grad():
        logits, _ = model(adapter.scorer.preprocess(scene.image)[None], torch.tensor([[model.start_id, *ids]]))
    expected = [float(torch.log_softmax(logits[0, t], -1)[token]) for t, token in enumerate(ids)]
    np.testing.assert_allclose(together.scores, expected, atol=1e-5)


def test_teacher_forced_logprobs_equal_the_generators_scores(adapter, scene) -> None:
    images = adapter.scorer.preprocess(scene.image)[None]
    ids, generated = adapter.scorer.model.generate(images)[0]
    explanation = adapter.explain(scene.image)  # no caption: generate, then explain
    assert explanation.labels == adapter.scorer.model.decode_ids(ids)
    np.testing.assert_allclose(explanation.info["logprobs"], generated, atol=1e-5)
    np.testing.assert_allclose(explanation.scores, generated, atol=1e-5)


def test_logit_score_and_whole_caption(adapter, scene) -> None:
    caption = "a red circle"
    logit = adapter.explain(scene.image, caption, score="logit", whole_caption=True, guided=False)
    logprob = adapter.explain(scene.image, caption, guided=False)
    assert logit.labels == ["a", "red", "circle", "<caption>"]
    assert sum(logprob.info["logprobs"]) == pytest.approx(logit.info["logprobs"][-1], abs=1e-5)
    # y = the raw logit of word t, which exceeds its log-prob by the step's log-sum-exp exactly
    model = adapter.scorer.model
    ids = model.encode_words(caption.split())
    with torch.no_grad():
        logits, _ = model(adapter.scorer.preprocess(scene.image)[None], torch.tensor([[model.start_id, *ids]]))
    np.testing.assert_allclose(logit.scores[:3], [float(logits[0, t, token]) for t, token in enumerate(ids)], atol=1e-5)
    np.testing.assert_allclose(logit.scores[:3] - logprob.scores, torch.logsumexp(logits[0, :3], -1).numpy(), atol=1e-5)


def test_words_subset_by_word_and_contrast_maps(adapter, scene) -> None:
    explanation = adapter.explain(scene.image, "a red circle", words=["circle", "red"])
    assert explanation.labels == ["circle", "red"] and explanation.indices == [2, 1]
    assert explanation.contrasts.shape == (2, 128, 128)
    assert explanation.attention.shape == (2, 128, 128)
    assert explanation.counterfactual.shape == (2, 128, 128)
    # the contrast is log p(w) minus the log-prob of the most likely OTHER token at that step
    tokens = adapter.scorer.tokenize("a red circle")
    images = adapter.scorer.preprocess(scene.image)[None]
    with torch.no_grad():
        logprobs = adapter.scorer.score(images, torch.tensor([tokens.ids])).logprobs[0]
    for contrast, position in zip(explanation.info["contrast_scores"], [2, 1], strict=True):
        others = logprobs[position].clone()
        others[tokens.ids[position]] = float("-inf")
        expected = logprobs[position, tokens.ids[position]] - others.max()
        assert contrast == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize(
    ("caption", "message"),
    [("", "caption is empty"), ("   ", "caption is empty"), ("a purple circle", "not in the shapes-captioner vocabulary: purple"), ("?!", "has no words")],
)
def test_bad_captions_give_clear_errors(adapter, scene, caption, message) -> None:
    with pytest.raises(InputError, match=message):
        adapter.explain(scene.image, caption)


def test_bad_word_selection(adapter, scene) -> None:
    with pytest.raises(InputError, match="word 'blue' is not in the caption 'a red circle'"):
        adapter.explain(scene.image, "a red circle", words=["blue"])
    with pytest.raises(InputError, match="outside the caption's 3 words"):
        adapter.explain(scene.image, "a red circle", words=[3])


def test_caption_explanation_leaves_the_model_unchanged(adapter, scene) -> None:
    model = adapter.scorer.model.train()
    before = model_state(model)
    adapter.explain(scene.image, "a red circle and a blue triangle")
    assert_same_state(before, model_state(model))
    model.eval()


def test_guided_method_is_the_base_map_times_guided_backprop_magnitude(adapter, scene) -> None:
    guided = adapter.explain(scene.image, "a red circle", method="guided_hirescam")
    plain = adapter.explain(scene.image, "a red circle", method="hirescam")
    magnitude = np.abs(plain.guided / np.where(plain.heatmaps == 0, 1, plain.heatmaps)[..., None]).sum(axis=-1)
    expected = plain.heatmaps * magnitude
    peak = expected.max(axis=(1, 2), keepdims=True)
    nonzero = plain.heatmaps > 1e-3
    np.testing.assert_allclose(guided.heatmaps[nonzero], (expected / peak)[nonzero], rtol=1e-3, atol=1e-5)
    assert guided.method == "guided_hirescam"
    np.testing.assert_allclose(guided.guided, plain.guided, rtol=1e-5, atol=1e-8)  # Guided Grad-CAM images use the base map
    with pytest.raises(InputError, match="unknown method 'guided_foo'; choose one of: gradcam"):
        adapter.explain(scene.image, "a red circle", method="guided_foo")


@dataclass
class _MisalignedScorer:
    """The shipped captioner's scorer with a fault in its teacher-forced rows: ``"extra"`` keeps
    L + 1 rows (the row after the last token too), ``"shifted"`` keeps rows 1..L, so row t
    scores token t + 1, ``"attention"`` drops the attention's step axis."""

    inner: ShapesCaptionerScorer
    fault: str

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def score(self, images: torch.Tensor, ids: torch.Tensor) -> CaptionScores:
        start = torch.full((ids.shape[0], 1), self.inner.model.start_id, dtype=torch.long)
        logits, attention = self.inner.model(images, torch.cat([start, ids], dim=1))
        length = ids.shape[1]
        if self.fault == "extra":
            return CaptionScores(logits, attention)
        if self.fault == "shifted":
            return CaptionScores(logits[:, 1:], attention[:, 1:])
        return CaptionScores(logits[:, :length], attention[:, 0])


@pytest.fixture(scope="module")
def shipped() -> ShapesCaptionerScorer:
    return mmcam.load("shapes-captioner").scorer


def test_a_scorer_with_one_row_too_many_is_refused_with_the_expected_shape(shipped, scene) -> None:
    adapter = CaptionAdapter(_MisalignedScorer(shipped, "extra"))
    vocabulary = len(shipped.model.vocab)
    expected = (
        f"CaptionScorer.score returned logits of shape (1, 4, {vocabulary}), expected (N, L, V) with N = 1 captions "
        "and L = number of caption tokens = 3 (row t scores token t)"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        adapter.explain(scene.image, "a red circle")
    with pytest.raises(ValueError, match=r"returned attention of shape \(1, 16, 16\), expected \(N, L, h, w\)"):
        CaptionAdapter(_MisalignedScorer(shipped, "attention")).explain(scene.image, "a red circle")


def test_a_scorer_shifted_by_one_row_is_caught_on_a_generated_caption(shipped, scene) -> None:
    generated = CaptionAdapter(shipped).explain(scene.image, guided=False)  # the correct scorer passes
    assert len(generated.labels) >= 2
    with pytest.raises(ValueError, match="CaptionScorer.score looks shifted by one row: .* token t \\+ 1"):
        CaptionAdapter(_MisalignedScorer(shipped, "shifted")).explain(scene.image, guided=False)


@dataclass
class _AspectSizedScorer(ShapesCaptionerScorer):
    """Square images at 128x128, others at 96x96, resized to the model's 128x128 inside the
    forward: a stand-in for a VLM that sizes each image by its own aspect ratio."""

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        from mmcam.io import to_tensor

        side = 128 if pixels.shape[0] == pixels.shape[1] else 96
        return to_tensor(pixels, (side, side))

    def score(self, images: torch.Tensor, ids: torch.Tensor) -> CaptionScores:
        return super().score(torch.nn.functional.interpolate(images, size=(128, 128), mode="bilinear"), ids)


def test_images_of_different_processed_sizes_get_one_pass_per_size_and_their_own_maps(adapter) -> None:
    sized = CaptionAdapter(_AspectSizedScorer(adapter.scorer.model), default_method="gradcam")
    scenes = make_split("test", 3)
    images = [scenes[0].image, scenes[1].image[:, :100], scenes[2].image]  # square, wide, square
    captions = ["a red circle", "a blue rectangle and a green triangle", "a green triangle"]
    batched = sized.explain_batch(images, captions)
    assert [item.heatmaps[0].shape for item in batched] == [(128, 128), (128, 100), (128, 128)]
    for image, caption, together in zip(images, captions, batched, strict=True):
        alone = sized.explain(image, caption)
        assert together.labels == alone.labels
        np.testing.assert_allclose(together.grid_maps, alone.grid_maps, atol=1e-5)
        np.testing.assert_allclose(together.scores, alone.scores, atol=1e-5)
        np.testing.assert_allclose(together.guided_gradients, alone.guided_gradients, atol=1e-5)
    assert [item.guided_gradients.shape[-1] for item in batched] == [128, 96, 128]  # at each pass's input size
    with pytest.raises(InputError, match=r"preprocess to different sizes \(128x128, 96x96\) .* use explain_batch"):
        sized.run_batch(images, captions)


def test_unknown_options_name_the_accepted_ones(adapter, scene) -> None:
    with pytest.raises(TypeError, match="unknown caption option.*beam_width; accepted: words, method, beam_size"):
        adapter.explain(scene.image, "a red circle", beam_width=2)
