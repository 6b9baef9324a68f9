"""transformers VQA models: ViLT (answer logits over its answer list) and BLIP (generated answers,
y^c = the answer's log-prob), saved as tiny checkpoints and loaded back through ``mmcam.load``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_same_state, model_state
from hf_fixtures import ANSWERS, adapter, image_file, one_thread  # noqa: F401 (autouse fixture)
from mmcam.adapters.hf import GenerativeVQAAdapter
from mmcam.adapters.vqa import VQAAdapter, VQAScorer
from mmcam.errors import InputError
from mmcam.io import load_image

QUESTIONS = ["what color is the triangle?", "is it red"]  # different lengths: the second is padded


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    pixels = load_image(image_file()).pixels
    return [pixels, np.ascontiguousarray(pixels[::-1, ::-1])]


def _question_inputs(scorer, question: str) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = scorer.tokenize(question)
    return scorer.collate([tokens]), scorer.preprocess(load_image(image_file()).pixels)[None]


@pytest.mark.parametrize("family", ["vilt", "blip-vqa"])
def test_loads_as_a_vqa_adapter_on_the_default_layer(family) -> None:
    loaded = adapter(family)
    assert isinstance(loaded, VQAAdapter) and loaded.kind == "vqa"
    assert isinstance(loaded.scorer, VQAScorer)
    expected = {"vilt": "vilt.embeddings.patch_embeddings.projection", "blip-vqa": "vision_model.encoder.layers.0"}
    assert loaded.scorer.layer == expected[family]


@pytest.mark.parametrize("family", ["vilt", "blip-vqa"])
def test_batched_answers_equal_one_call_per_answer(family, images) -> None:
    loaded = adapter(family)
    answers = ["red", "blue", "yes"]
    together = loaded.explain_batch(images, QUESTIONS, [answers] * 2)
    for n in range(2):
        assert together[n].heatmaps.shape == (3, 40, 56)
        assert together[n].labels == answers
        assert together[n].info["question_words"] == QUESTIONS[n].rstrip("?").split()
        assert together[n].info["word_attributions"].shape == (3, len(QUESTIONS[n].split()))
        for k, answer in enumerate(answers):
            alone = loaded.explain(images[n], QUESTIONS[n], [answer])
            np.testing.assert_allclose(alone.heatmaps[0], together[n].heatmaps[k], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(
                alone.info["word_attributions"][0], together[n].info["word_attributions"][k], rtol=1e-4, atol=1e-6
            )
            assert alone.scores[0] == pytest.approx(together[n].scores[k], abs=1e-5)
        distinct = {tuple(np.round(heatmap, 4).ravel()) for heatmap in together[n].heatmaps}
        assert len(distinct) == 3


def test_vilt_scores_are_its_answer_logits(images) -> None:
    loaded = adapter("vilt")
    (explanation,) = loaded.explain_batch(images[:1], QUESTIONS[:1], [list(ANSWERS)])
    question_ids, pixels = _question_inputs(loaded.scorer, QUESTIONS[0])
    with torch.no_grad():
        logits = loaded.scorer.model(input_ids=question_ids, pixel_values=pixels).logits[0]
    np.testing.assert_allclose(explanation.scores, logits.numpy(), atol=1e-5)
    assert explanation.info["answer"] == ANSWERS[int(logits.argmax())]
    assert explanation.info["probability"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-6)


def test_vilt_word_attributions_sum_their_tokens_gradient_times_embedding() -> None:
    loaded = adapter("vilt")
    question = "what color is the triangle"  # "triangle" is two tokens: tri ##angle
    tokens = loaded.scorer.tokenize(question)
    assert tokens.spans[-1] == (5, 6)
    explanation = loaded.explain(image_file(), question, ["green"], guided=False, counterfactual=False)
    question_ids, pixels = _question_inputs(loaded.scorer, question)
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["embeddings"] = output

    embedding = loaded.scorer.model.vilt.embeddings.text_embeddings.word_embeddings
    handle = embedding.register_forward_hook(keep)
    try:
        logits = loaded.scorer.score(pixels, question_ids)
        logits[0, ANSWERS.index("green")].backward()
    finally:
        handle.remove()
        loaded.scorer.model.zero_grad(set_to_none=True)
    embeddings = captured["embeddings"]
    per_token = (embeddings.grad * embeddings).sum(-1)[0].detach()
    expected = [float(per_token[list(span)].sum()) for span in tokens.spans]
    np.testing.assert_allclose(explanation.info["word_attributions"][0], expected, rtol=1e-4, atol=1e-6)


def test_blip_answer_logprob_equals_the_scores_generate_reports() -> None:
    loaded = adapter("blip-vqa")
    scorer = loaded.scorer
    question_ids, pixels = _question_inputs(scorer, QUESTIONS[0])
    with torch.no_grad():
        output = scorer.model.generate(
            input_ids=question_ids, pixel_values=pixels, min_new_tokens=1, max_new_tokens=scorer.max_new_tokens,
            do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
    sequence = output.sequences[0].tolist()
    steps = [float(torch.log_softmax(step[0], -1)[sequence[k + 1]]) for k, step in enumerate(output.logits)]
    end = sequence.index(scorer.end_id)
    generated_logprob = sum(steps[:end])  # the answer's tokens and the end token that closes it
    explanation = loaded.explain(image_file(), QUESTIONS[0])  # no answer given: the model's own
    answer = scorer.tokenizer.decode(sequence[1:end], skip_special_tokens=True)
    assert explanation.labels == [answer] and explanation.info["answer"] == answer
    assert explanation.scores[0] == pytest.approx(generated_logprob, abs=1e-5)
    assert explanation.info["probability"] == pytest.approx(np.exp(generated_logprob), rel=1e-5)


def test_blip_explains_any_answer_text_and_the_top_beams() -> None:
    loaded = adapter("blip-vqa")
    (given,) = loaded.explain_batch([image_file()], [QUESTIONS[0]], [["green triangle", "red"]])
    assert given.labels == ["green triangle", "red"]
    assert np.all(given.scores < 0)  # log-probs of whole answers
    np.testing.assert_allclose(given.info["probabilities"], np.exp(given.scores), rtol=1e-5)
    (top,) = loaded.explain_batch([image_file()], [QUESTIONS[0]], top=2)
    assert len(top.labels) == 2 and top.labels[0] == top.info["answer"]
    assert top.scores[0] >= top.scores[1]
    with pytest.raises(InputError, match="has no answer list; give answers as text"):
        loaded.explain(image_file(), QUESTIONS[0], [0])
    with pytest.raises(InputError, match="cannot explain the top 0 answers: ask for 1 or more"):
        loaded.explain(image_file(), QUESTIONS[0], top=0)


def _same_explanation(together, alone) -> None:
    assert together.labels == alone.labels
    assert together.info["answer"] == alone.info["answer"]
    assert [t["answer"] for t in together.info["top"]] == [t["answer"] for t in alone.info["top"]]
    np.testing.assert_allclose(
        [t["probability"] for t in together.info["top"]], [t["probability"] for t in alone.info["top"]], rtol=1e-5
    )
    assert together.info["probability"] == pytest.approx(alone.info["probability"], rel=1e-5)
    np.testing.assert_allclose(together.info["probabilities"], alone.info["probabilities"], rtol=1e-5)
    np.testing.assert_allclose(together.scores, alone.scores, atol=1e-5)
    np.testing.assert_allclose(together.heatmaps, alone.heatmaps, atol=1e-5)
    np.testing.assert_allclose(together.info["word_attributions"], alone.info["word_attributions"], rtol=1e-4, atol=1e-5)


def test_blip_batch_items_get_the_answers_they_get_alone(images) -> None:
    """Each item is scored on its own candidates: a batch neighbour's generated (or given)
    answer never becomes an item's answer, nor enters its ranking."""
    loaded = adapter("blip-vqa")
    pictures = [*images, np.ascontiguousarray(images[0][:, ::-1, ::-1])]
    questions = [*QUESTIONS, "what shape is on the left"]
    together = loaded.explain_batch(pictures, questions, top=2)
    alone = [loaded.explain(picture, question, top=2) for picture, question in zip(pictures, questions, strict=True)]
    own = [{t["answer"] for t in explanation.info["top"]} for explanation in alone]
    assert own[0] != own[1] and own[1] != own[2]  # the items' generated answers differ: pooling would show
    for n in range(3):
        _same_explanation(together[n], alone[n])
        assert {t["answer"] for t in together[n].info["top"]} == own[n]
    given = [["red", "blue"], ["green triangle", "yes"], ["circle", "no"]]
    together = loaded.explain_batch(pictures, questions, given, contrast=("red", "no"))
    for n in range(3):
        alone = loaded.explain_batch([pictures[n]], [questions[n]], [given[n]], contrast=("red", "no"))[0]
        _same_explanation(together[n], alone)
        np.testing.assert_allclose(together[n].contrasts, alone.contrasts, atol=1e-5)
        assert {t["answer"] for t in together[n].info["top"]} == {*given[n], "red", "no"}


@pytest.mark.parametrize("family", ["vilt", "blip-vqa"])
def test_explaining_leaves_the_model_and_random_state_unchanged(family) -> None:
    loaded = adapter(family)
    model = loaded.scorer.model.train()
    try:
        before = model_state(model)
        rng = torch.random.get_rng_state()
        loaded.explain(image_file(), "what color is it")
        assert_same_state(before, model_state(model))
        assert torch.equal(rng, torch.random.get_rng_state())  # ViLT's token shuffle draws from a forked state
    finally:
        model.eval()


def test_blip_vqa_adapter_is_generative() -> None:
    assert isinstance(adapter("blip-vqa"), GenerativeVQAAdapter)
