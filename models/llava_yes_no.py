"""Generated questions for stage 3 of ``models/train_llava.py``, in easy-VQA's own templates: balanced
yes/no questions and "what is the {color} shape?" questions about images whose objects are known.

easy-VQA's yes/no answers follow strong priors per template (a non-negated colour question is "no"
88% of the time, a non-negated shape question 66%), and a model trained on them answers at about
the prior. Here every yes/no template of easy-VQA's train questions is asked about training images
whose object is known from its pixels (``llava_vision_stage.easy_vqa_labels``), with the asked word
drawn so that "the word names the object" is true half of the time: the answer is then independent
of the template and of the word alone, and only comparing the word with the image predicts it.

Templates are read from the train questions (each colour or shape word replaced by a slot); whether a
template is negated ("is there not a red shape?") is read from the train answers: a template is
negated when its answer disagrees with "the word names the object" on most of its train questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mmcam.data.scenes import COLORS, SHAPES

COLOR_SLOT, SHAPE_SLOT = "{color}", "{shape}"
_WORDS = sorted([*((word, COLOR_SLOT) for word in COLORS), *((word, SHAPE_SLOT) for word in SHAPES)],
                key=lambda pair: len(pair[0]), reverse=True)


@dataclass(frozen=True)
class QuestionTemplate:
    """One easy-VQA question form with one slot (``{color}`` or ``{shape}``) in ``text``.

    kind: ``"yes/no"`` (is the named thing there?), or ``"shape"`` / ``"color"`` (name the shape or
    colour of the object the slot's word picks out: "what is the {color} shape?" -> its shape);
    negated: a yes/no template answered "yes" when the word names no object.
    """

    text: str
    slot: str
    kind: str
    negated: bool = False

    def ask(self, word: str) -> str:
        return self.text.replace(self.slot, word)


def template_of(question: str) -> tuple[str, str | None]:
    """``(question with its colour/shape word replaced by its slot, that word or None)``.

    ``"is there a red shape?"`` -> ``("is there a {color} shape?", "red")``; a question naming no
    colour or shape (``"what shape is in the image?"``) comes back unchanged with ``None``.
    """
    words = question.split(" ")
    for index, token in enumerate(words):
        bare = token.rstrip("?")
        for word, slot in _WORDS:
            if bare == word:
                words[index] = slot + token[len(bare):]
                return " ".join(words), word
    return question, None


def question_templates(questions: Sequence[str], answers: Sequence[str], object_colors: Sequence[str],
                       object_shapes: Sequence[str]) -> list[QuestionTemplate]:
    """Every template of ``questions`` that has a slot (sorted by text), its kind read from ``answers``.

    ``object_colors`` / ``object_shapes``: the colour and shape of each question's (one-object) image,
    from its pixels. A yes/no template is negated when its answers disagree with "the word names the
    object"; raises when that agreement is neither at least 95% nor at most 5% of its questions, or a
    template's answers mix kinds (the labels or the templates would then be wrong).
    """
    agree: dict[tuple[str, str], list[bool]] = {}
    kinds: dict[tuple[str, str], set[str]] = {}
    for question, answer, color, shape in zip(questions, answers, object_colors, object_shapes, strict=True):
        text, word = template_of(question)
        if word is None:
            continue
        slot = COLOR_SLOT if word in COLORS else SHAPE_SLOT
        kind = "yes/no" if answer in ("yes", "no") else "color" if answer in COLORS else "shape"
        kinds.setdefault((text, slot), set()).add(kind)
        named = word == (color if slot == COLOR_SLOT else shape)
        agree.setdefault((text, slot), []).append((answer == "yes") == named)
    templates = []
    for (text, slot), kind_set in sorted(kinds.items()):
        if len(kind_set) != 1:
            raise ValueError(f"template {text!r} has answers of several kinds: {sorted(kind_set)}")
        (kind,) = kind_set
        share = float(np.mean(agree[text, slot]))
        if kind == "yes/no" and 0.05 < share < 0.95:
            raise ValueError(f"template {text!r}: answers agree with the image labels on {100 * share:.1f}% of "
                             "its questions; expected nearly all or nearly none")
        templates.append(QuestionTemplate(text, slot, kind, negated=kind == "yes/no" and share < 0.5))
    return templates


def generated_questions(templates: Sequence[QuestionTemplate], objects: Sequence[Sequence[tuple[str, str]]],
                        per_image: int, find_share: float, rng: np.random.Generator
                        ) -> tuple[np.ndarray, list[str], list[str]]:
    """``(image index per question (N,), questions, answers)``: ``per_image`` questions about each image
    whose objects are ``objects[i]`` = ``[(colour, shape), ...]``.

    With probability ``find_share`` (when the image has an object whose colour or shape is unique
    in it) a "shape"/"color" template asks about such an object by its colour or shape; otherwise a
    yes/no template drawn uniformly, whose word names one of the image's objects with probability
    1/2 (another word of the same kind otherwise, both uniform). The answer is "yes" when the word
    names an object, the other way round for a negated template: every yes/no template is answered
    "yes" half of the time.
    """
    yes_no = [template for template in templates if template.kind == "yes/no"]
    finds = [template for template in templates if template.kind != "yes/no"]
    image_index, questions, answers = [], [], []
    for image, image_objects in enumerate(objects):
        for _ in range(per_image):
            pair = None
            if finds and rng.random() < find_share:
                pair = _find_question(finds[int(rng.integers(len(finds)))], image_objects, rng)
            while pair is None:
                pair = _yes_no_question(yes_no[int(rng.integers(len(yes_no)))], image_objects, rng)
            image_index.append(image)
            questions.append(pair[0])
            answers.append(pair[1])
    return np.array(image_index), questions, answers


def _yes_no_question(template: QuestionTemplate, objects: Sequence[tuple[str, str]],
                     rng: np.random.Generator) -> tuple[str, str] | None:
    """A yes/no question whose word names an object with probability 1/2; None when the drawn case
    cannot be asked (every shape present, no shape left to ask "no" about)."""
    position = 0 if template.slot == COLOR_SLOT else 1
    present = sorted({obj[position] for obj in objects})
    absent = [word for word in (COLORS if template.slot == COLOR_SLOT else SHAPES) if word not in present]
    named = bool(rng.random() < 0.5)
    pool = present if named else absent
    if not pool:
        return None
    word = pool[int(rng.integers(len(pool)))]
    return template.ask(word), "yes" if named != template.negated else "no"


def _find_question(template: QuestionTemplate, objects: Sequence[tuple[str, str]],
                   rng: np.random.Generator) -> tuple[str, str] | None:
    """"what is the {color} shape?" about an object (drawn uniformly) whose colour (shape) is unique in
    the image; None if there is none."""
    position = 0 if template.slot == COLOR_SLOT else 1
    words = [obj[position] for obj in objects]
    unique = [obj for obj in objects if words.count(obj[position]) == 1]
    if not unique:
        return None
    obj = unique[int(rng.integers(len(unique)))]
    return template.ask(obj[position]), obj[1 if template.kind == "shape" else 0]


WORDS = (*COLORS, *SHAPES)  # the asked-word classes of ``AnswerHeads``: 8 colours, then 3 shapes


class AnswerHeads(nn.Module):
    """Training-only linear heads on the language model's hidden state at the answer position (the
    position whose next token is the answer): which colour/shape word the question asks about, and
    whether that word names one of the image's objects. Discarded after training.

    Without them the answer position of a yes/no question hardly encodes the asked word (a linear
    probe on the stage-2 model read it for about half of the colour questions), and "does the word
    name the object" cannot be learned from balanced answers; the word head supervises that fetch
    directly, the match head the comparison (models/shapes_llava.md).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.word = nn.Linear(width, len(WORDS))
        self.match = nn.Linear(width, 2)

    def loss(self, word_states: torch.Tensor, match_states: torch.Tensor, words: torch.Tensor,
             matches: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the word head on ``word_states`` ``(B, C)`` against ``words`` ``(B,)``
        and the match head on ``match_states`` against ``matches`` (rows with -100 ignored)."""
        return (F.cross_entropy(self.word(word_states), words, ignore_index=-100, reduction="sum")
                + F.cross_entropy(self.match(match_states), matches, ignore_index=-100, reduction="sum"))


def answer_targets(questions: Sequence[str | None], objects: Sequence[Sequence[tuple[str, str]]]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(asked word index into WORDS, 1 if that word names one of the objects else 0)``, both ``(B,)``
    long, -100 for rows without a colour or shape word (captions, "what shape is in the image?")."""
    words, matches = [], []
    for question, image_objects in zip(questions, objects, strict=True):
        word = template_of(question)[1] if question is not None else None
        words.append(-100 if word is None else WORDS.index(word))
        matches.append(-100 if word is None else int(any(word in obj for obj in image_objects)))
    return torch.tensor(words), torch.tensor(matches)
