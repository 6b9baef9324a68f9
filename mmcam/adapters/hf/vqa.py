"""VQA models from transformers: y^c of an answer c, for a classifier (ViLT) and a generator (BLIP).

ViLT scores a fixed answer list: y^c is answer c's logit. BLIP generates its answer word by word,
so it has no answer list: each item's candidates are the answers it asks for, or the model's own
for its question (greedy, or the top-k beams), and y^c = log p(c | image, question), the sum of
the log-probs of c's tokens and of the end token that closes it (so "red" and "red circle" are
different answers). Their probabilities are exp(y^c), not a softmax over the candidates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...core.hooks import eval_mode
from ...errors import InputError
from ...io import LoadedImage
from ..vqa import AnswerChoices, QuestionTokens, VQAAdapter
from .preprocess import ImageSettings
from .words import encode_words


Candidate = tuple[str, tuple[int, ...]]
"""A candidate answer of a generative model: its text and its token ids."""


def question_tokens(tokenizer: Any, question: str, max_length: int | None) -> QuestionTokens:
    """Words, token ids (with the tokenizer's special tokens) and each word's token positions."""
    ids, pieces = encode_words(tokenizer, question, special_tokens=True, max_length=max_length)
    unknown = tuple(pieces.words[w] for w in pieces.unknown)
    return QuestionTokens(pieces.words, tuple(ids), unknown, spans=pieces.spans)


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Token id sequences right-padded with ``pad_id`` to one (N, L) tensor."""
    longest = max(len(sequence) for sequence in sequences)
    return torch.tensor([list(sequence) + [pad_id] * (longest - len(sequence)) for sequence in sequences])


@dataclass
class _QuestionReader:
    """Preprocessing and question tokens shared by the VQA scorers."""

    model: nn.Module
    tokenizer: Any
    image: ImageSettings
    max_question_tokens: int | None

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        return self.image.tensor(pixels)

    def tokenize(self, question: str) -> QuestionTokens:
        return question_tokens(self.tokenizer, question, self.max_question_tokens)

    def collate(self, questions: Sequence[QuestionTokens]) -> Tensor:
        return pad_ids([question.ids for question in questions], self.pad_id)

    def question_mask(self, question_ids: Tensor) -> Tensor:
        return (question_ids != self.pad_id).long()


@dataclass
class ViltScorer(_QuestionReader):
    """ViLT (``ViltForQuestionAnswering``): y^c = the logit of answer c of ``config.id2label``.

    ViLT embeds the image with one patch convolution, then draws a random order of the image
    tokens on every forward pass; the patch convolution (B, C, h, w) is the last place where the
    image keeps its layout, so it is the hooked layer. The draw is made from a fixed seed in a
    forked random state: the caller's random numbers are untouched and passes are repeatable.
    """

    name: str = "vilt"
    answers: Sequence[str] = ()
    layer: str = "vilt.embeddings.patch_embeddings.projection"
    embedding_layer: str | None = "vilt.embeddings.text_embeddings.word_embeddings"
    reshape: object | None = None
    seed: int = 0

    def score(self, images: Tensor, question_ids: Tensor) -> Tensor:
        """Answer logits (N, A)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            output = self.model(
                input_ids=question_ids, attention_mask=self.question_mask(question_ids), pixel_values=images
            )
        return output.logits


@dataclass
class BlipAnswerScorer(_QuestionReader):
    """BLIP VQA (``BlipForQuestionAnswering``): y^c = log p(answer c | image, question).

    The vision transformer encodes the image, the text encoder reads the question with
    cross-attention to the image, and the text decoder reads ``bos + answer + end`` with
    cross-attention to the question; decoder row t scores the token at position t + 1. The
    decoder reads each item's question unpadded, so an item scores the same alone and in a
    minibatch, and as ``generate`` scores it. BLIP has no fixed answer list (``answers`` is
    empty): :meth:`score` takes each item's candidate answers (see
    :class:`GenerativeVQAAdapter`).
    """

    name: str = "blip-vqa"
    layer: str = "vision_model.encoder.layers.-1"
    embedding_layer: str | None = "text_encoder.embeddings.word_embeddings"
    reshape: object | None = None
    bos_id: int = 0
    end_id: int = 0
    max_new_tokens: int = 10
    answers: tuple[str, ...] = ()

    def answer_tokens(self, answer: str) -> Candidate:
        """An answer text (whitespace normalised) and its tokens as the tokenizer reads it;
        InputError for an empty answer or one with words the tokenizer cannot read."""
        text = " ".join(answer.split())
        ids, pieces = encode_words(self.tokenizer, text, special_tokens=False)
        if not ids:
            raise InputError(f"the answer {answer!r} has no tokens")
        if pieces.unknown:
            unknown = ", ".join(pieces.words[w] for w in pieces.unknown)
            raise InputError(f"answer words {self.name}'s tokenizer cannot read (unknown token): {unknown}")
        return text, tuple(ids)

    def generate_answers(self, images: Tensor, question_ids: Tensor, count: int) -> list[list[Candidate]]:
        """Per item, the model's ``count`` best non-empty answers (greedy, or beam search) as
        (text, ids), fewer when the beams read alike; each item generates with its question
        unpadded (see :meth:`score`)."""
        beams = 1 if count == 1 else 2 * count  # spare beams: two token sequences may read the same
        answers = []
        with torch.no_grad(), eval_mode(self.model):
            for n, question in enumerate(self._unpadded(question_ids)):
                sequences = self.model.generate(
                    input_ids=question,
                    pixel_values=images[n : n + 1],
                    num_beams=beams,
                    num_return_sequences=beams,
                    do_sample=False,
                    min_new_tokens=1,  # an empty answer answers nothing
                    max_new_tokens=self.max_new_tokens,
                )
                distinct: dict[str, Candidate] = {}
                for sequence in sequences.tolist():
                    text, ids = self._answer_of(sequence)
                    distinct.setdefault(text.lower(), (text, ids))
                answers.append(list(distinct.values())[:count])
        return answers

    def _answer_of(self, sequence: list[int]) -> Candidate:
        ids = sequence[1:]  # after the decoder's bos
        ids = ids[: ids.index(self.end_id)] if self.end_id in ids else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip() or self.tokenizer.decode(ids).strip()
        return text or "<empty>", tuple(ids)

    def score(self, images: Tensor, question_ids: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        """log p(answer a | image n, question n) for the token ids ``candidates[n][a]`` of item
        n's candidate answers, shape (N, A) with A the most candidates of any item; an item's
        columns past its own candidates hold -inf (probability 0).

        The image and question encoders run once for the minibatch (the question's
        self-attention masks its padding); the answer decoder runs per item, on its own
        candidates and its question's unpadded states, because BLIP's text cross-attention
        drops its mask in transformers 5.x and would read the padding.
        """
        if len(candidates) != question_ids.shape[0]:
            raise ValueError(f"{len(candidates)} candidate lists given for a batch of {question_ids.shape[0]}")
        if not all(candidates):
            raise InputError("no candidate answers to score; give --answer or let the model generate one")
        question_mask = self.question_mask(question_ids)
        image_states = self.model.vision_model(pixel_values=images).last_hidden_state
        question_states = self.model.text_encoder(
            input_ids=question_ids, attention_mask=question_mask, encoder_hidden_states=image_states
        ).last_hidden_state
        lengths = question_mask.sum(dim=1).tolist()
        rows = [
            self._answer_logprobs(question_states[n : n + 1, :length], candidates[n])
            for n, length in enumerate(lengths)
        ]
        width = max(row.shape[0] for row in rows)
        return torch.stack([nn.functional.pad(row, (0, width - row.shape[0]), value=-torch.inf) for row in rows])

    def _unpadded(self, question_ids: Tensor) -> list[Tensor]:
        lengths = self.question_mask(question_ids).sum(dim=1).tolist()
        return [question_ids[n : n + 1, :length] for n, length in enumerate(lengths)]

    def _answer_logprobs(self, question_states: Tensor, candidates: Sequence[Sequence[int]]) -> Tensor:
        """(A,): each candidate's summed token log-probs given one question's states (1, L, C)."""
        device = question_states.device
        decoder_ids = pad_ids([(self.bos_id, *ids, self.end_id) for ids in candidates], self.pad_id).to(device)
        decoder_mask = pad_ids([[1] * (len(ids) + 2) for ids in candidates], 0).to(device)
        logits = self.model.text_decoder(
            input_ids=decoder_ids,
            attention_mask=decoder_mask,
            encoder_hidden_states=question_states.expand(len(candidates), -1, -1),
        ).logits
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logprobs = logprobs.gather(2, decoder_ids[:, 1:, None]).squeeze(2) * decoder_mask[:, 1:]
        return token_logprobs.sum(dim=1)

    def probabilities(self, scores: Tensor) -> Tensor:
        """p(answer) = exp(log p(answer)): the scores are log-probs of whole answers already."""
        return scores.exp()


@dataclass
class GenerativeVQAAdapter(VQAAdapter):
    """:class:`~mmcam.adapters.vqa.VQAAdapter` for a model that generates its answers.

    Each item gets its own candidate answers, built afresh per call: the answers it asks for
    (any text) or, when it asks for none, the model's ``top`` answers to its question (greedy
    for 1, beam search otherwise), then the contrast's answers. An item is scored against its
    own candidates only, so its answer, ranking and probabilities are those it gets alone.
    """

    scorer: BlipAnswerScorer

    def answer_index(self, answer: str | int) -> int:
        """A generative model has no answer list, so no answer has an index: this checks that
        ``answer`` is text the model can read (InputError otherwise) and returns -1."""
        self._candidate(answer)
        return -1

    def _candidate(self, answer: str | int) -> Candidate:
        if isinstance(answer, (int, np.integer)):
            raise InputError(f"{self.name} generates its answers and has no answer list; give answers as text")
        return self.scorer.answer_tokens(answer)

    def answer_choices(
        self,
        images: Sequence[LoadedImage],
        questions: Sequence[QuestionTokens],
        answers: Sequence[Sequence[str | int] | None],
        top: int,
        contrast: tuple[str | int, str | int] | None,
    ) -> AnswerChoices:
        """Per item: its given answers or its ``top`` generated ones, then the contrast's."""
        given = [[self._candidate(answer) for answer in item] if item else None for item in answers]
        contrasted = [self._candidate(answer) for answer in contrast or ()]
        asking = [n for n, item in enumerate(given) if item is None]
        generated: dict[int, list[Candidate]] = {}
        if asking:
            pixels = torch.stack([self.scorer.preprocess(images[n].pixels) for n in asking])
            question_ids = self.scorer.collate([questions[n] for n in asking])
            generated = dict(zip(asking, self.scorer.generate_answers(pixels, question_ids, top), strict=True))
        texts, ids, wanted = [], [], []
        for n, item in enumerate(given):
            own = item if item is not None else generated[n]
            if len(own) < top and item is None:
                question = " ".join(questions[n].words)
                raise InputError(f"{self.name} gave {len(own)} distinct answers to {question!r}, fewer than the top {top} asked for")
            candidates: dict[str, Candidate] = {}  # by lower-cased text: "Red" and "red" are one answer
            for text, tokens in [*own, *contrasted]:
                candidates.setdefault(text.lower(), (text, tokens))
            keys = list(candidates)
            texts.append([text for text, _ in candidates.values()])
            ids.append([tokens for _, tokens in candidates.values()])
            wanted.append(None if item is None else [keys.index(text.lower()) for text, _ in item])
        pair = None
        if contrasted:
            lowered = [[text.lower() for text in item] for item in texts]
            pair = tuple([item.index(text.lower()) for item in lowered] for text, _ in contrasted)
        return AnswerChoices(texts, wanted, pair, functools.partial(self.scorer.score, candidates=ids))
