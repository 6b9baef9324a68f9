"""VQA models from transformers: y^c of an answer c, for a classifier (ViLT) and a generator (BLIP).

ViLT scores a fixed answer list: y^c is answer c's logit. BLIP generates its answer word by word,
so it has no answer list: its candidates are, per call, the answers asked for plus the model's
own (greedy, or the top-k beams), and y^c = log p(c | image, question), the sum of the
log-probs of c's tokens and of the end token that closes it (so "red" and "red circle" are
different answers). Their probabilities are exp(y^c), not a softmax over the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...core.hooks import eval_mode
from ...errors import InputError
from ...io import ImageLike, load_image
from ..vqa import QuestionTokens, VQAAdapter, VQARun
from .preprocess import ImageSettings
from .words import encode_words


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
    minibatch, and as ``generate`` scores it. ``answers`` is the current candidate list (see
    :class:`GenerativeVQAAdapter`).
    """

    name: str = "blip-vqa"
    layer: str = "vision_model.encoder.layers.-1"
    embedding_layer: str | None = "text_encoder.embeddings.word_embeddings"
    reshape: object | None = None
    bos_id: int = 0
    end_id: int = 0
    max_new_tokens: int = 10
    answers: list[str] = field(default_factory=list)
    answer_ids: list[tuple[int, ...]] = field(default_factory=list)

    def clear_answers(self) -> None:
        self.answers.clear()
        self.answer_ids.clear()

    def add_answer(self, answer: str, ids: Sequence[int] | None = None) -> int:
        """Index of candidate ``answer`` (added when new); ``ids`` are its tokens, by default the
        tokenizer's reading of the text."""
        text = " ".join(answer.split())
        known = [candidate.lower() for candidate in self.answers]
        if text.lower() in known:
            return known.index(text.lower())
        if ids is None:
            ids, pieces = encode_words(self.tokenizer, text, special_tokens=False)
            if not ids:
                raise InputError(f"the answer {answer!r} has no tokens")
            if pieces.unknown:
                unknown = ", ".join(pieces.words[w] for w in pieces.unknown)
                raise InputError(f"answer words {self.name}'s tokenizer cannot read (unknown token): {unknown}")
        self.answers.append(text)
        self.answer_ids.append(tuple(ids))
        return len(self.answers) - 1

    def generate_answers(self, images: Tensor, question_ids: Tensor, count: int) -> list[list[tuple[str, tuple[int, ...]]]]:
        """Per item, the model's ``count`` best non-empty answers (greedy, or beam search) as
        (text, ids); each item generates with its question unpadded (see :meth:`score`)."""
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
                distinct = {}
                for sequence in sequences.tolist():
                    text, ids = self._answer_of(sequence)
                    distinct.setdefault(text.lower(), (text, ids))
                answers.append(list(distinct.values())[:count])
        return answers

    def _answer_of(self, sequence: list[int]) -> tuple[str, tuple[int, ...]]:
        ids = sequence[1:]  # after the decoder's bos
        ids = ids[: ids.index(self.end_id)] if self.end_id in ids else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip() or self.tokenizer.decode(ids).strip()
        return text or "<empty>", tuple(ids)

    def score(self, images: Tensor, question_ids: Tensor) -> Tensor:
        """log p(answer c | image n, question n), shape (N, A).

        The image and question encoders run once for the minibatch (the question's
        self-attention masks its padding); the answer decoder runs per item on the question's
        unpadded states, because BLIP's text cross-attention drops its mask in transformers 5.x
        and would read the padding.
        """
        if not self.answer_ids:
            raise InputError("no candidate answers to score; give --answer or let the model generate one")
        question_mask = self.question_mask(question_ids)
        image_states = self.model.vision_model(pixel_values=images).last_hidden_state
        question_states = self.model.text_encoder(
            input_ids=question_ids, attention_mask=question_mask, encoder_hidden_states=image_states
        ).last_hidden_state
        lengths = question_mask.sum(dim=1).tolist()
        return torch.cat([self._answer_logprobs(question_states[n : n + 1, :length]) for n, length in enumerate(lengths)])

    def _unpadded(self, question_ids: Tensor) -> list[Tensor]:
        lengths = self.question_mask(question_ids).sum(dim=1).tolist()
        return [question_ids[n : n + 1, :length] for n, length in enumerate(lengths)]

    def _answer_logprobs(self, question_states: Tensor) -> Tensor:
        """(1, A): each candidate's summed token log-probs given one question's states (1, L, C)."""
        device = question_states.device
        decoder_ids = pad_ids([(self.bos_id, *ids, self.end_id) for ids in self.answer_ids], self.pad_id).to(device)
        decoder_mask = pad_ids([[1] * (len(ids) + 2) for ids in self.answer_ids], 0).to(device)
        logits = self.model.text_decoder(
            input_ids=decoder_ids,
            attention_mask=decoder_mask,
            encoder_hidden_states=question_states.expand(len(self.answer_ids), -1, -1),
        ).logits
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logprobs = logprobs.gather(2, decoder_ids[:, 1:, None]).squeeze(2) * decoder_mask[:, 1:]
        return token_logprobs.sum(dim=1)[None]

    def probabilities(self, scores: Tensor) -> Tensor:
        """p(answer) = exp(log p(answer)): the scores are log-probs of whole answers already."""
        return scores.exp()


@dataclass
class GenerativeVQAAdapter(VQAAdapter):
    """:class:`~mmcam.adapters.vqa.VQAAdapter` for a model that generates its answers.

    Each call builds its candidate answers afresh: the answers asked for (any text), then for
    the items that ask for none, the model's ``top`` answers (greedy for 1, beam search with
    ``top`` beams otherwise). Every item is scored against all candidates of its minibatch, so an
    item's best candidate (``info["answer"]``) can be another item's generated answer when the
    model finds it more likely. Not thread-safe: the candidate list belongs to the scorer.
    """

    scorer: BlipAnswerScorer

    def answer_index(self, answer: str | int) -> int:
        if isinstance(answer, (int, np.integer)):
            raise InputError(f"{self.name} generates its answers and has no answer list; give answers as text")
        return self.scorer.add_answer(answer)

    def run(
        self,
        images: Sequence[ImageLike],
        questions: Sequence[str],
        answers: Sequence[Sequence[str | int] | None] | None = None,
        *,
        top: int = 1,
        contrast: tuple[str | int, str | int] | None = None,
        **options: Any,
    ) -> VQARun:
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images but {len(questions)} questions")
        loaded = [load_image(image) for image in images]
        self.scorer.clear_answers()
        given = list(answers) if answers else [None] * len(loaded)
        for item in given:
            for answer in item or ():
                self.answer_index(answer)
        for answer in contrast or ():
            self.answer_index(answer)
        asking = [n for n, item in enumerate(given) if not item]
        if asking:
            pixels = torch.stack([self.scorer.preprocess(loaded[n].pixels) for n in asking])
            question_ids = self.scorer.collate([self.scorer.tokenize(questions[n]) for n in asking])
            for generated in self.scorer.generate_answers(pixels, question_ids, top):
                for text, ids in generated:
                    self.scorer.add_answer(text, ids)
        return super().run(loaded, questions, answers, top=top, contrast=contrast, **options)
