"""VQA models: one heatmap per answer, y^c = the pre-softmax score of answer c.

Wrap a model in a :class:`VQAScorer` (preprocessing, question tokens, answer logits) and
:class:`VQAAdapter` explains any number of answers for a minibatch of (image, question) pairs
from one forward pass, with question-word attributions (gradient x embedding) from the same
backward pass.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import Tensor, nn

from ..core import GradCAM, GradientRecord
from ..errors import InputError
from ..explanation import Explanation
from ..io import ImageLike, LoadedImage, load_image
from ..pipeline import (
    DEFAULT_COUNTERFACTUAL, DEFAULT_GUIDED, ItemLabels, ModelPass, explanations, model_device, one_pass_pixels,
    per_size, run_pass,
)
from ..targets import ChosenClassTarget, ContrastTarget
from ._scorer_adapter import ScorerAdapter, checked_options


@dataclass(frozen=True)
class QuestionTokens:
    """A question as the model reads it: its words, their ids, and the words it does not know.

    ``spans[w]`` are the positions in ``ids`` of word w's tokens, for subword tokenizers; None
    when word w is token w."""

    words: tuple[str, ...]
    ids: tuple[int, ...]
    unknown: tuple[str, ...] = ()
    spans: tuple[tuple[int, ...], ...] | None = None


@runtime_checkable
class VQAScorer(Protocol):
    """What mmcam needs from a VQA model. ``model`` holds ``layer`` (the image encoder's last
    convolutional layer) and ``embedding_layer`` (the question's word embeddings, output
    (N, L, E), or None for no word attributions)."""

    name: str
    model: nn.Module
    layer: str
    embedding_layer: str | None
    reshape: object | None
    answers: Sequence[str]

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """RGB uint8 (H, W, 3) -> the model's image tensor (C, h, w)."""

    def tokenize(self, question: str) -> QuestionTokens:
        """Words and ids of a question (unknown words mapped to the model's unknown token)."""

    def collate(self, questions: Sequence[QuestionTokens]) -> Tensor:
        """Padded question ids (N, L)."""

    def score(self, images: Tensor, question_ids: Tensor) -> Tensor:
        """Answer logits (N, A), pre-softmax."""


@dataclass
class VQAAdapter(ScorerAdapter):
    """Explains a :class:`VQAScorer`'s answers."""

    scorer: VQAScorer
    kind: str = "vqa"

    @property
    def answers(self) -> list[str]:
        return list(self.scorer.answers)

    def answer_index(self, answer: str | int) -> int:
        """Index of an answer (case-insensitive); unknown answers list the closest ones."""
        if isinstance(answer, (int, np.integer)):
            if not 0 <= int(answer) < len(self.answers):
                raise InputError(f"answer index {answer} out of range 0-{len(self.answers) - 1}")
            return int(answer)
        lowered = [item.lower() for item in self.answers]
        wanted = answer.strip().lower()
        if wanted in lowered:
            return lowered.index(wanted)
        close = difflib.get_close_matches(wanted, lowered, n=4, cutoff=0.3)
        raise InputError(
            f"unknown answer {answer!r}; closest: {', '.join(close) or 'none'}; answers: {', '.join(self.answers)}"
        )

    def question_tokens(self, question: str) -> QuestionTokens:
        """Tokenized question; empty questions are an error, unknown words a warning."""
        if not question or not question.strip():
            raise InputError("the question is empty")
        tokens = self.scorer.tokenize(question)
        if not tokens.words:
            raise InputError(f"the question {question!r} has no words")
        if tokens.unknown:
            warnings.warn(
                f"question words unknown to {self.name}, read as its unknown token: {', '.join(dict.fromkeys(tokens.unknown))}",
                stacklevel=3,
            )
        return tokens

    def explain(self, image: ImageLike, question: str, answers: Sequence[str | int] | None = None, **options) -> Explanation:
        """Explain one (image, question); see :meth:`explain_batch`."""
        return self.explain_batch([image], [question], [answers] if answers else None, **options)[0]

    def answer_choices(
        self,
        images: Sequence[LoadedImage],
        questions: Sequence[QuestionTokens],
        answers: Sequence[Sequence[str | int] | None],
        top: int,
        contrast: tuple[str | int, str | int] | None,
    ) -> AnswerChoices:
        """Which answers each item is scored on and which of them are explained: here the
        model's fixed answer list, the same for every item."""
        wanted = [[self.answer_index(answer) for answer in item] if item else None for item in answers]
        pair = (self.answer_index(contrast[0]), self.answer_index(contrast[1])) if contrast else None
        return AnswerChoices([self.answers] * len(wanted), wanted, pair, self.scorer.score)

    def run(
        self,
        images: Sequence[ImageLike],
        questions: Sequence[str],
        answers: Sequence[Sequence[str | int] | None] | None = None,
        **options: Any,
    ) -> VQARun:
        """The one forward and backward pass behind :meth:`explain_batch`, for callers that
        want several methods' maps from the same gradients (evaluation). ``options``: the
        fields of :class:`VQAOptions`. The images must preprocess to one size."""
        settings = VQAOptions.of(options)
        loaded, pixels, given = self._inputs(images, questions, answers, settings)
        return self._run(loaded, one_pass_pixels(pixels), list(questions), given, settings)

    def _inputs(
        self,
        images: Sequence[ImageLike],
        questions: Sequence[str],
        answers: Sequence[Sequence[str | int] | None] | None,
        settings: VQAOptions,
    ) -> tuple[list[LoadedImage], list[Tensor], list[Sequence[str | int] | None]]:
        """The images loaded and preprocessed, and each item's given answers (or None)."""
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images but {len(questions)} questions")
        given = list(answers) if answers else [None] * len(images)
        if len(given) != len(images):
            raise InputError(f"{len(images)} images but {len(given)} answer lists")
        if settings.top < 1 and not all(given):
            raise InputError(f"cannot explain the top {settings.top} answers: ask for 1 or more")
        loaded = [load_image(image) for image in images]
        return loaded, [self.scorer.preprocess(item.pixels) for item in loaded], given

    def _run(
        self,
        loaded: Sequence[LoadedImage],
        batch: Tensor,
        questions: Sequence[str],
        given: Sequence[Sequence[str | int] | None],
        settings: VQAOptions,
    ) -> VQARun:
        """:meth:`run` of images already loaded and preprocessed to one size (N, C, h, w)."""
        top = settings.top
        tokens = [self.question_tokens(question) for question in questions]
        choices = self.answer_choices(loaded, tokens, given, top, settings.contrast)
        for n, item in enumerate(choices.wanted):
            if item is None and not 1 <= top <= len(choices.answers[n]):
                raise InputError(f"cannot explain the top {top} answers: {self.name} has {len(choices.answers[n])} answers")
        counts = {len(item) if item else top for item in choices.wanted}
        if len(counts) != 1:
            raise InputError("every item of a minibatch must explain the same number of answers")
        (count,) = counts
        targets = [
            ChosenClassTarget(tuple(item[k] if item else None for item in choices.wanted), rank=k)
            for k in range(count)
        ]
        if choices.contrast:
            targets.append(ContrastTarget(*choices.contrast))
        method = settings.method or self.default_method
        model_pass = ModelPass(
            self.scorer.model,
            self.scorer.layer,
            forward=choices.forward,
            reshape=self.scorer.reshape,
            extra_layers=[self.scorer.embedding_layer] if self.scorer.embedding_layer else [],
        )
        question_ids = self.scorer.collate(tokens)
        device = model_device(self.scorer.model)
        cam, record = run_pass(
            model_pass, (batch.to(device), question_ids.to(device)), targets, method=method, guided=settings.guided,
            explained=count,
        )
        return VQARun(cam, record, list(loaded), tokens, choices.wanted, count, batch, question_ids, method, choices.answers)

    def explain_batch(
        self,
        images: Sequence[ImageLike],
        questions: Sequence[str],
        answers: Sequence[Sequence[str | int] | None] | None = None,
        *,
        counterfactual: bool = DEFAULT_COUNTERFACTUAL,
        **options: Any,
    ) -> list[Explanation]:
        """Explain a minibatch from ONE forward pass (one per image size, for a VLM that sizes
        each image by its aspect ratio).

        Per item, ``answers[n]`` (given answers) or, when None, its ``top`` best answers (the
        first is the prediction). All items must ask for the same number of answers.
        ``options`` are the fields of :class:`VQAOptions`: ``top``, ``method``, ``guided`` and
        ``contrast=(a, b)``, a map for score(a) - score(b) (the explanation's ``contrasts``).
        """
        settings = VQAOptions.of(options)
        loaded, pixels, given = self._inputs(images, questions, answers, settings)

        def explain_group(group: list[int], stacked: Tensor) -> list[Explanation]:
            texts = [questions[n] for n in group]
            run = self._run([loaded[n] for n in group], stacked, texts, [given[n] for n in group], settings)
            return self._explanations(run, texts, settings, counterfactual)

        return per_size(pixels, explain_group)

    def _explanations(
        self, run: VQARun, questions: Sequence[str], settings: VQAOptions, counterfactual: bool
    ) -> list[Explanation]:
        record, loaded, tokens, wanted, count = run.record, run.images, run.questions, run.wanted, run.count
        candidates, contrast = run.answers, settings.contrast
        logits = record.output
        # a scorer whose scores are log-probs of generated answers says how they become probabilities
        own_probabilities = getattr(self.scorer, "probabilities", None)
        probabilities = own_probabilities(logits) if own_probabilities else logits.softmax(dim=1)
        attributions = word_attributions(record, self.scorer.embedding_layer)
        items = []
        for n, item in enumerate(loaded):
            chosen = wanted[n] or probabilities[n].topk(count).indices.tolist()
            ranked = probabilities[n].topk(min(max(5, count), len(candidates[n])))
            info = {
                "question": questions[n],
                "answer": candidates[n][int(probabilities[n].argmax())],
                "probability": float(probabilities[n].max()),
                "probabilities": [float(probabilities[n, index]) for index in chosen],
                "top": [
                    {"answer": candidates[n][int(i)], "probability": float(p)}
                    for p, i in zip(ranked.values, ranked.indices, strict=True)
                ],
                "question_words": list(tokens[n].words),
                "title": questions[n],
            }
            if attributions is not None:
                info["word_attributions"] = per_word(attributions[n, :count], tokens[n])
            contrast_labels = [f"{contrast[0]}-vs-{contrast[1]}"] if contrast else []
            items.append(ItemLabels(item, [candidates[n][i] for i in chosen], list(chosen), info, contrast_labels))
        return explanations(
            self.kind, self.name, run.cam, record, items, method=run.method, explained=count, counterfactual=counterfactual
        )


@dataclass(frozen=True)
class VQAOptions:
    """How answers are explained: the keyword options of :meth:`VQAAdapter.explain`,
    ``explain_batch`` and ``run``. ``top``: explain each item's best ``top`` answers when it
    gives none; ``method``: a map method (default: the adapter's); ``guided``: Guided
    Backprop on first use (``"lazy"``, default), in the same pass (True) or not at all (False);
    ``contrast``: ``(a, b)``, also a map for score(a) - score(b)."""

    top: int = 1
    method: str | None = None
    guided: bool | str = DEFAULT_GUIDED
    contrast: tuple[str | int, str | int] | None = None

    @classmethod
    def of(cls, options: dict[str, Any]) -> VQAOptions:
        """Options from keywords, checked: an unknown keyword or method fails before any work."""
        return checked_options(cls, options, "VQA")


@dataclass(frozen=True)
class AnswerChoices:
    """Per item n: ``answers[n]``, the answers it is scored on (the columns of its row of
    scores); ``wanted[n]``, the positions in them of the answers to explain (None: its best
    ``count``); the contrast's positions (one for all items, or one per item), or None; and
    ``forward``, the scoring function ``(images, question_ids) -> (N, A)``."""

    answers: list[list[str]]
    wanted: list[list[int] | None]
    contrast: tuple[int | Sequence[int], int | Sequence[int]] | None
    forward: Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class VQARun:
    """One forward and backward pass over a minibatch: the engine, its record (targets: the
    answers, then the contrast if asked), the images, the questions' tokens, the given answers
    per item (None: the best ``count``), the model's inputs, and per item the answers its
    scores are over (``record.output[n, a]`` scores ``answers[n][a]``)."""

    cam: GradCAM
    record: GradientRecord
    images: list[LoadedImage]
    questions: list[QuestionTokens]
    wanted: list[list[int] | None]
    count: int
    pixels: Tensor
    question_ids: Tensor
    method: str
    answers: list[list[str]]


def per_word(attributions: np.ndarray, question: QuestionTokens) -> np.ndarray:
    """Token attributions (T, L) -> word attributions (T, words): a word's is the sum of its
    tokens' (exact for gradient x embedding, which is a sum over positions)."""
    if question.spans is None:
        return attributions[:, : len(question.words)]
    return np.stack([attributions[:, list(span)].sum(axis=1) for span in question.spans], axis=1)


def word_attributions(record, embedding_layer: str | None) -> np.ndarray | None:
    """Gradient x embedding, summed over the embedding dimension: (N, T, L).

    For target t and word l: sum_e dy_t/dx_le * x_le. Their sum over the words is the first-order
    (Taylor) estimate of y_t minus its value with every word embedding set to zero; it is exact
    when y_t is linear in the embeddings.
    """
    if not embedding_layer:
        return None
    embeddings = record.extra_activations[embedding_layer]  # (N, L, E)
    gradients = record.extra_gradients[embedding_layer]  # (N, T, L, E)
    return (gradients * embeddings.unsqueeze(1)).sum(dim=-1).numpy()
