"""Per-answer explanations of a VQA model: batching, word attributions, errors."""

from __future__ import annotations

from dataclasses import dataclass

import easy_vqa
import numpy as np
import pytest
import torch
from torch import nn

from mmcam.adapters.easy_vqa import EasyVQAScorer
from mmcam.adapters.vqa import QuestionTokens, VQAAdapter, VQAScorer
from mmcam.errors import InputError
from mmcam.io import load_image, to_tensor
from mmcam.models.vqa import EasyVQANet

VOCAB = ["<pad>", "<unk>", "what", "color", "is", "the", "shape", "circle", "there", "a"]


@pytest.fixture(scope="module")
def adapter() -> VQAAdapter:
    torch.manual_seed(0)
    return VQAAdapter(EasyVQAScorer(EasyVQANet(VOCAB, easy_vqa.get_answers()).eval()))


@pytest.fixture(scope="module")
def images() -> list[str]:
    paths = easy_vqa.get_test_image_paths()
    return [paths[0], paths[1], paths[2]]


def test_batched_answers_equal_one_call_per_answer(adapter, images) -> None:
    questions = ["what color is the shape?", "what shape is there?", "is there a circle?"]
    together = adapter.explain_batch(images, questions, [["red", "blue", "circle"]] * 3)
    for n in range(3):
        for k, answer in enumerate(["red", "blue", "circle"]):
            alone = adapter.explain(images[n], questions[n], [answer])
            # float32 convolutions round differently for batch sizes 1 and 3
            np.testing.assert_allclose(alone.heatmaps[0], together[n].heatmaps[k], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(
                alone.info["word_attributions"][0], together[n].info["word_attributions"][k], rtol=1e-5, atol=1e-7
            )
            assert alone.scores[0] == pytest.approx(together[n].scores[k], abs=1e-5)


def test_top_k_explains_the_best_answers_in_order(adapter, images) -> None:
    (explanation,) = adapter.explain_batch(images[:1], ["what color is the shape?"], top=3)
    probabilities = explanation.info["probabilities"]
    assert probabilities == sorted(probabilities, reverse=True)
    assert explanation.labels[0] == explanation.info["answer"]
    assert [item["answer"] for item in explanation.info["top"][:3]] == explanation.labels


@dataclass
class BagOfWordsScorer:
    """A user's own VQA model through the public protocol: a conv grid times the summed word
    embeddings, then a linear answer layer; linear in the embeddings, so gradient x embedding
    attributions sum exactly to score(question) - score(no words)."""

    model: nn.Module
    name: str = "bag-of-words"
    layer: str = "conv"
    embedding_layer: str = "embedding"
    reshape: object = None
    answers: tuple = ("yes", "no", "red")

    def preprocess(self, pixels):
        return to_tensor(pixels, (16, 16))

    def tokenize(self, question):
        words = tuple(question.lower().split())
        return QuestionTokens(words, tuple(1 + len(word) % 5 for word in words))

    def collate(self, questions):
        longest = max(len(q.ids) for q in questions)
        return torch.tensor([list(q.ids) + [0] * (longest - len(q.ids)) for q in questions])

    def score(self, images, question_ids):
        return self.model(images, question_ids)


class BagOfWords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.embedding = nn.Embedding(6, 4, padding_idx=0)
        self.answer = nn.Linear(4, 3)

    def forward(self, images, question_ids):
        image = torch.relu(self.conv(images)).mean(dim=(-2, -1))
        question = self.embedding(question_ids).sum(dim=1)
        return self.answer(image * question)


def test_word_attributions_sum_to_the_score_change_for_a_linear_question_path(images) -> None:
    torch.manual_seed(0)
    scorer = BagOfWordsScorer(BagOfWords().eval())
    assert isinstance(scorer, VQAScorer)
    adapter = VQAAdapter(scorer)
    explanation = adapter.explain(images[0], "is it red", ["red", "no"])
    attributions = explanation.info["word_attributions"]  # (T, words)
    assert attributions.shape == (2, 3)
    bias = scorer.model.answer.bias.detach().numpy()[[2, 1]]  # score with all embeddings zero
    np.testing.assert_allclose(attributions.sum(axis=1), explanation.scores - bias, rtol=1e-5)
    # by hand: y_t = W_t . (image * sum_l e_l) + b_t, so word l's gradient x embedding is
    # sum_e W_te * image_e * e_le
    model = scorer.model
    with torch.no_grad():
        image = torch.relu(model.conv(scorer.preprocess(load_image(images[0]).pixels)[None])).mean(dim=(-2, -1))[0]
        words = model.embedding(torch.tensor(scorer.tokenize("is it red").ids))
        expected = (model.answer.weight[[2, 1]][:, None, :] * image * words).sum(dim=-1)
    np.testing.assert_allclose(attributions, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_unknown_question_words_warn_and_empty_questions_fail(adapter, images) -> None:
    with pytest.warns(UserWarning, match="unknown to easy-vqa.*: purple, thing"):
        adapter.explain(images[0], "what color is the purple thing?")
    with pytest.raises(InputError, match="question is empty"):
        adapter.explain(images[0], "  ")
    with pytest.raises(InputError, match="unknown answer 'purple'; closest:"):
        adapter.explain(images[0], "what color?", ["purple"])
