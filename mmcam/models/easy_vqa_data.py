"""The easy-VQA dataset (``pip install easy-vqa``) as tensors.

Each of easy-VQA's 64x64 images carries about ten questions, so a split keeps every image once and
gives each question the index of its image; :meth:`EasyVQASplit.question_images` expands them
when a batch needs one image per question.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import easy_vqa
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmcam.text import tokenize

PAD_INDEX = 0
UNKNOWN_INDEX = 1
PAD_WORD = "<pad>"
UNKNOWN_WORD = "<unk>"

_QUESTIONS: dict[str, Callable[[], tuple[list[str], list[str], list[int]]]] = {
    "train": easy_vqa.get_train_questions,
    "test": easy_vqa.get_test_questions,
}
_IMAGE_PATHS: dict[str, Callable[[], dict[int, str]]] = {
    "train": easy_vqa.get_train_image_paths,
    "test": easy_vqa.get_test_image_paths,
}


@dataclass(frozen=True)
class EasyVQASplit:
    """One easy-VQA split: ``N`` questions about ``I`` images.

    images: (I, 3, 64, 64) float RGB in [0, 1], one per distinct image.
    image_ids: (I,) long, easy-VQA's id of each image.
    question_ids: (N, L) long, word indices right-padded with 0 (``L`` = longest question).
    answer_indices: (N,) long, index into ``easy_vqa.get_answers()``.
    question_image_index: (N,) long, row of ``images`` that each question asks about.
    questions: the N question texts, as easy-VQA gives them.
    """

    images: Tensor
    image_ids: Tensor
    question_ids: Tensor
    answer_indices: Tensor
    question_image_index: Tensor
    questions: list[str]

    def __len__(self) -> int:
        return len(self.questions)

    def question_images(self, question_indices: Tensor | slice) -> Tensor:
        """Images of the selected questions: (n, 3, 64, 64)."""
        return self.images[self.question_image_index[question_indices]]


def encode_words(words: Sequence[str], vocab: Sequence[str]) -> list[int]:
    """Indices of ``words`` in ``vocab``; words outside it map to ``UNKNOWN_INDEX`` (1).

    A literal ``"<pad>"`` word maps to 1 too, so no word can end a question early.
    """
    index_of = {word: index for index, word in enumerate(vocab) if index != PAD_INDEX}
    return [index_of.get(word, UNKNOWN_INDEX) for word in words]


def pad_question_ids(encoded_questions: Sequence[Sequence[int]], length: int | None = None) -> Tensor:
    """Right-pad word indices with ``PAD_INDEX``: (N, L), ``L`` = ``length`` or the longest question."""
    longest = max((len(ids) for ids in encoded_questions), default=0)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"cannot pad questions of up to {longest} words to length {length}")
    padded = torch.full((len(encoded_questions), length), PAD_INDEX, dtype=torch.long)
    for row, ids in enumerate(encoded_questions):
        padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return padded


def build_vocab(questions: Sequence[str]) -> list[str]:
    """``["<pad>", "<unk>"]`` followed by the sorted distinct words of ``questions``."""
    words = sorted({word for question in questions for word in tokenize(question)})
    return [PAD_WORD, UNKNOWN_WORD, *words]


def load_split_questions(split: str) -> tuple[list[str], list[str], list[int]]:
    """easy-VQA's (question texts, answers, image ids) of ``split`` ("train" or "test")."""
    if split not in _QUESTIONS:
        raise ValueError(f"unknown easy-VQA split {split!r}; choose one of: {', '.join(_QUESTIONS)}")
    return _QUESTIONS[split]()


def load_easy_vqa_split(split: str, vocab: Sequence[str], max_questions: int | None = None) -> EasyVQASplit:
    """Load ``split`` ("train" or "test"), questions encoded with ``vocab``.

    ``max_questions`` keeps only the first questions of the split (and loads only their images).
    """
    questions, answers, question_image_ids = load_split_questions(split)
    if max_questions is not None:
        questions, answers = questions[:max_questions], answers[:max_questions]
        question_image_ids = question_image_ids[:max_questions]
    answer_index = {answer: index for index, answer in enumerate(easy_vqa.get_answers())}
    image_paths = _IMAGE_PATHS[split]()
    distinct_image_ids = sorted(set(question_image_ids))
    row_of_image = {image_id: row for row, image_id in enumerate(distinct_image_ids)}
    return EasyVQASplit(
        images=torch.stack([load_image(image_paths[image_id]) for image_id in distinct_image_ids]),
        image_ids=torch.tensor(distinct_image_ids, dtype=torch.long),
        question_ids=pad_question_ids([encode_words(tokenize(question), vocab) for question in questions]),
        answer_indices=torch.tensor([answer_index[answer] for answer in answers], dtype=torch.long),
        question_image_index=torch.tensor([row_of_image[i] for i in question_image_ids], dtype=torch.long),
        questions=list(questions),
    )


def load_image(path: str) -> Tensor:
    """An image file as (3, H, W) float RGB in [0, 1]."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
