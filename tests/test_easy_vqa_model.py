"""The shipped easy-VQA model: its weights, its answers, and the interface the Grad-CAM adapter uses."""

from __future__ import annotations

from pathlib import Path

import easy_vqa
import pytest
import torch
from torch import nn

from mmcam.text import tokenize
from mmcam.models.easy_vqa_data import EasyVQASplit, load_easy_vqa_split
from mmcam.models.vqa import DEFAULT_WEIGHTS, EasyVQANet, load_easy_vqa, save_easy_vqa

# The first 100 test questions (about 11 images); the shipped model answers every one correctly.
FIRST_TEST_QUESTIONS = 100


@pytest.fixture(scope="module")
def model() -> EasyVQANet:
    return load_easy_vqa()


@pytest.fixture(scope="module")
def test_questions(model: EasyVQANet) -> EasyVQASplit:
    return load_easy_vqa_split("test", model.vocab, max_questions=FIRST_TEST_QUESTIONS)


def answer_logits(model: EasyVQANet, split: EasyVQASplit) -> torch.Tensor:
    with torch.no_grad():
        return model(split.question_images(slice(None)), split.question_ids)


def test_shipped_model_answers_first_test_questions_correctly(model: EasyVQANet, test_questions: EasyVQASplit) -> None:
    predicted = answer_logits(model, test_questions).argmax(dim=1)
    wrong = [
        f"{question!r}: said {model.answers[guess]}, truth {model.answers[truth]}"
        for question, guess, truth in zip(test_questions.questions, predicted.tolist(),
                                          test_questions.answer_indices.tolist(), strict=True)
        if guess != truth
    ]
    assert len(test_questions) == FIRST_TEST_QUESTIONS
    assert wrong == []


def test_answers_are_easy_vqa_answers_in_order(model: EasyVQANet) -> None:
    assert model.answers == easy_vqa.get_answers()
    assert model.answer_layer.out_features == 13


def test_shipped_weights_are_small_and_model_is_in_eval_mode(model: EasyVQANet) -> None:
    assert DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    assert not model.training
    assert not any(isinstance(module, nn.Dropout) for module in model.modules())


def test_extra_padding_leaves_logits_unchanged(model: EasyVQANet, test_questions: EasyVQASplit) -> None:
    images = test_questions.question_images(slice(None))
    padded_ids = nn.functional.pad(test_questions.question_ids, (0, 7), value=0)
    with torch.no_grad():
        logits = model(images, test_questions.question_ids)
        logits_with_padding = model(images, padded_ids)
    # The questions have different lengths, so the batch already mixes padded and unpadded rows.
    lengths = (test_questions.question_ids != 0).sum(dim=1)
    assert lengths.min() < lengths.max() == test_questions.question_ids.shape[1]
    torch.testing.assert_close(logits_with_padding, logits, atol=1e-6, rtol=0)


def test_one_question_alone_gets_the_same_logits_as_in_a_batch(model: EasyVQANet, test_questions: EasyVQASplit) -> None:
    row = int((test_questions.question_ids != 0).sum(dim=1).argmin())  # the shortest question
    question_ids = torch.tensor([model.encode_question(tokenize(test_questions.questions[row]))])
    with torch.no_grad():
        alone = model(test_questions.question_images(slice(row, row + 1)), question_ids)
    # Batch size changes the convolution's summation order, hence float32 rounding, not the padding.
    torch.testing.assert_close(alone, answer_logits(model, test_questions)[row : row + 1], atol=1e-5, rtol=1e-5)


def test_eval_outputs_are_deterministic(model: EasyVQANet, test_questions: EasyVQASplit) -> None:
    assert torch.equal(answer_logits(model, test_questions), answer_logits(model, test_questions))


def test_unknown_words_map_to_index_one(model: EasyVQANet) -> None:
    assert model.vocab[:2] == ["<pad>", "<unk>"]
    assert model.encode_question(["what", "zebra", "shape", "<pad>"]) == [
        model.vocab.index("what"), 1, model.vocab.index("shape"), 1,
    ]


def test_split_question_ids_are_the_tokenized_questions(model: EasyVQANet, test_questions: EasyVQASplit) -> None:
    for question, ids in zip(test_questions.questions, test_questions.question_ids.tolist(), strict=True):
        words = tokenize(question)
        assert ids == model.encode_question(words) + [0] * (len(ids) - len(words))
        assert 1 not in ids  # easy-VQA's test questions use only training words


def test_split_images_are_rgb_in_unit_range(test_questions: EasyVQASplit) -> None:
    paths = easy_vqa.get_test_image_paths()
    first_image_id = easy_vqa.get_test_questions()[2][0]
    assert test_questions.images.shape[1:] == (3, 64, 64)
    assert test_questions.images.dtype == torch.float32
    assert 0.0 <= float(test_questions.images.min()) and float(test_questions.images.max()) <= 1.0
    assert Path(paths[first_image_id]).is_file()
    assert int(test_questions.image_ids[test_questions.question_image_index[0]]) == first_image_id


def test_adapter_hook_points_have_the_documented_shapes(model: EasyVQANet, test_questions: EasyVQASplit) -> None:
    """The Grad-CAM adapter hooks ``image_encoder`` (N, 64, 16, 16) and ``embedding`` (N, L, 32)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        model.image_encoder.register_forward_hook(lambda _m, _i, out: outputs.__setitem__("grid", out)),
        model.embedding.register_forward_hook(lambda _m, _i, out: outputs.__setitem__("words", out)),
    ]
    try:
        answer_logits(model, test_questions)
    finally:
        for hook in hooks:
            hook.remove()
    question_count, question_length = test_questions.question_ids.shape
    assert outputs["grid"].shape == (question_count, 64, 16, 16)
    assert float(outputs["grid"].min()) >= 0.0  # ends in a ReLU
    assert outputs["words"].shape == (question_count, question_length, 32)
    assert torch.all(outputs["words"][test_questions.question_ids == 0] == 0)  # padding_idx 0


def test_logits_are_linear_in_the_pooled_feature_grid(model: EasyVQANet, test_questions: EasyVQASplit) -> None:
    """Answer logits are an affine function of mean-pooled image features, so Grad-CAM equals CAM here."""
    images = test_questions.question_images(slice(0, 4))
    question_ids = test_questions.question_ids[:4]
    with torch.no_grad():
        pooled = model.image_encoder(images).mean(dim=(2, 3))
        question_vector = model.encode_question_ids(question_ids)
        expected = (pooled @ model.image_projection.weight.T + model.image_projection.bias) * question_vector
        expected = expected @ model.answer_layer.weight.T + model.answer_layer.bias
        torch.testing.assert_close(model(images, question_ids), expected, atol=1e-5, rtol=1e-5)


def test_save_then_load_gives_identical_logits(model: EasyVQANet, test_questions: EasyVQASplit, tmp_path: Path) -> None:
    path = tmp_path / "copy.safetensors"
    save_easy_vqa(model, path)
    reloaded = load_easy_vqa(path)
    assert reloaded.vocab == model.vocab and reloaded.answers == model.answers
    assert torch.equal(answer_logits(reloaded, test_questions), answer_logits(model, test_questions))


def test_all_padding_question_is_rejected(model: EasyVQANet, test_questions: EasyVQASplit) -> None:
    with pytest.raises(ValueError, match="at least one word"):
        model(test_questions.question_images(slice(0, 1)), torch.zeros(1, 5, dtype=torch.long))


def test_missing_weights_name_both_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="easy_vqa.json"):
        load_easy_vqa(tmp_path / "easy_vqa.safetensors")
