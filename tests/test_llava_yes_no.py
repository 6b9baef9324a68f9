"""Stage-3 questions of shapes-llava's training (models/llava_yes_no.py): easy-VQA's templates read from
its train questions, and generated questions whose answers follow from the image's objects."""

from __future__ import annotations

import easy_vqa
import numpy as np
import pytest
import torch
from PIL import Image

from mmcam.data.scenes import COLORS, SHAPES

from models.llava_vision_stage import easy_vqa_object
from models.llava_yes_no import (
    COLOR_SLOT,
    SHAPE_SLOT,
    WORDS,
    AnswerHeads,
    QuestionTemplate,
    answer_targets,
    generated_questions,
    question_templates,
    template_of,
)


def test_template_of_replaces_the_one_colour_or_shape_word() -> None:
    assert template_of("is there a red shape?") == ("is there a {color} shape?", "red")
    assert template_of("is there not a triangle?") == ("is there not a {shape}?", "triangle")
    assert template_of("what color is the circle?") == ("what color is the {shape}?", "circle")
    assert template_of("what shape is in the image?") == ("what shape is in the image?", None)


@pytest.fixture(scope="module")
def templates() -> list[QuestionTemplate]:
    """Templates read from the questions about easy-VQA train images 0-299, labels from their pixels."""
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    objects = {}
    for image_id in sorted(set(image_ids)):
        if image_id < 300:
            with Image.open(paths[image_id]) as image:
                objects[image_id] = easy_vqa_object(np.asarray(image.convert("RGB")))[1:]
    rows = [row for row, image_id in enumerate(image_ids) if image_id < 300]
    return question_templates([questions[r] for r in rows], [answers[r] for r in rows],
                              [objects[image_ids[r]][0] for r in rows], [objects[image_ids[r]][1] for r in rows])


def test_templates_of_easy_vqa_negation_read_from_the_answers(templates) -> None:
    yes_no = [t for t in templates if t.kind == "yes/no"]
    assert len(yes_no) == 16 and sum(t.slot == COLOR_SLOT for t in yes_no) == 8
    # Read from the answers, the negated templates are exactly the ones whose text says "not" or "no".
    assert all(t.negated == (" not " in t.text or t.text.startswith("is no ")) for t in yes_no)
    finds = {(t.text, t.kind) for t in templates if t.kind != "yes/no"}
    assert finds == {("what is the {color} shape?", "shape"), ("what color is the {shape}?", "color"),
                     ("what is the color of the {shape}?", "color")}


def test_generated_yes_no_answers_follow_the_objects_and_are_balanced(templates) -> None:
    objects = [[("red", "circle")], [("blue", "triangle"), ("red", "rectangle")],
               [("gray", "circle"), ("teal", "rectangle"), ("teal", "circle")]] * 300
    rows, questions, answers = generated_questions(templates, objects, 4, 0.0, np.random.default_rng(1))
    assert len(questions) == 3600 and rows.tolist() == [i for i in range(900) for _ in range(4)]
    negated = {t.text for t in templates if t.negated}
    for row, question, answer in zip(rows, questions, answers, strict=True):
        text, word = template_of(question)
        present = word in {part for obj in objects[row] for part in obj}
        assert answer == ("yes" if present != (text in negated) else "no"), question
    assert abs(np.mean([answer == "yes" for answer in answers]) - 0.5) < 0.03
    # Every template, negated or not, asked with the word naming an object half of the time.
    named = [template_of(q)[1] in {p for obj in objects[r] for p in obj} for r, q in zip(rows, questions, strict=True)]
    assert abs(np.mean(named) - 0.5) < 0.03
    assert {template_of(q)[0] for q in questions} == {t.text for t in templates if t.kind == "yes/no"}


def test_generated_find_questions_name_the_object_picked_by_a_unique_word(templates) -> None:
    objects = [[("teal", "circle"), ("teal", "triangle")]] * 5 + [[("red", "circle"), ("red", "circle")]]
    rows, questions, answers = generated_questions(templates, objects, 40, 1.0, np.random.default_rng(2))
    finds = {(q, a) for q, a in zip(questions, answers, strict=True) if a not in ("yes", "no")}
    # The colour is shared, so only a shape word picks one object ("what is the teal shape?" has no
    # answer); a drawn "what is the {color} shape?" falls back to a yes/no question.
    assert finds == {("what color is the circle?", "teal"), ("what color is the triangle?", "teal"),
                     ("what is the color of the circle?", "teal"), ("what is the color of the triangle?", "teal")}
    assert 0 < len([a for a in answers if a in ("yes", "no")]) < len(answers)
    # Nothing picks one object in the last image: only yes/no questions about it.
    assert all(a in ("yes", "no") for r, a in zip(rows, answers, strict=True) if r == 5)
    _, questions, answers = generated_questions(templates, [[("red", "circle"), ("blue", "triangle")]], 60, 1.0,
                                                np.random.default_rng(3))
    assert {("what is the red shape?", "circle"), ("what is the blue shape?", "triangle"),
            ("what color is the triangle?", "blue")} <= set(zip(questions, answers, strict=True))
    assert all(a not in ("yes", "no") for a in answers)


def test_shape_slot_never_asks_no_when_every_shape_is_present(templates) -> None:
    shape_yes_no = [t for t in templates if t.kind == "yes/no" and t.slot == SHAPE_SLOT]
    objects = [[("red", "circle"), ("blue", "triangle"), ("gray", "rectangle")]]
    _, questions, answers = generated_questions(shape_yes_no, objects, 50, 0.0, np.random.default_rng(4))
    negated = {t.text for t in shape_yes_no if t.negated}
    assert all(a == ("no" if template_of(q)[0] in negated else "yes") for q, a in zip(questions, answers, strict=True))


def test_answer_targets_name_the_asked_word_and_whether_it_names_an_object() -> None:
    objects = [[("red", "circle")], [("red", "circle"), ("blue", "triangle")], [("gray", "rectangle")], []]
    words, matches = answer_targets(["is there not a triangle?", "what is the blue shape?", None,
                                     "what shape is in the image?"], objects)
    assert words.tolist() == [WORDS.index("triangle"), WORDS.index("blue"), -100, -100]
    assert matches.tolist() == [0, 1, -100, -100]
    assert WORDS[:8] == tuple(COLORS) and WORDS[8:] == SHAPES


def test_answer_heads_loss_is_summed_cross_entropy_over_the_rows_with_a_word() -> None:
    torch.manual_seed(0)
    heads = AnswerHeads(16)
    word_states, match_states = torch.randn(3, 16), torch.randn(3, 16)
    words, matches = torch.tensor([2, -100, 9]), torch.tensor([1, -100, 0])
    expected = sum(-torch.log_softmax(heads.word(word_states[r]), -1)[words[r]]
                   - torch.log_softmax(heads.match(match_states[r]), -1)[matches[r]] for r in (0, 2))
    torch.testing.assert_close(heads.loss(word_states, match_states, words, matches), expected)


def test_answer_positions_are_the_last_prompt_tokens_of_training_batches() -> None:
    # Two questions of different token lengths (right padding), through the training BatchMaker.
    from models.train_llava import BatchMaker, Examples, answer_positions, build_processor, build_tokenizer

    processor = build_processor(build_tokenizer(), 128, 16)
    images = np.zeros((1, 128, 128, 3), dtype=np.uint8)
    questions = ["is there a red shape?", "does the image not contain a circle?"]
    examples = Examples(images, images, np.array([0, 0]), questions, ["yes", "no"])
    batch = BatchMaker(processor, 64)(examples, [0, 1])
    positions = answer_positions(batch["labels"])
    tokenizer = processor.tokenizer
    for row, answer in enumerate(["yes", "no"]):
        assert tokenizer.decode(batch["input_ids"][row, positions[row]]) == ":"  # "... ASSISTANT:"
        assert tokenizer.decode(batch["input_ids"][row, positions[row] + 1]).strip() == answer
    assert positions[1] > positions[0]
