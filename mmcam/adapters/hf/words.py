"""Subword tokens -> words: which token positions make up each word of a caption or question.

Every tokenizer family marks word starts differently (WordPiece ``##``, byte-level BPE ``Ġ``,
SentencePiece ``▁``). Instead of parsing those marks, the text is decoded one token longer at a
time: a token whose new text begins with whitespace starts a word, any other token continues the
current one. Every token but the special ones (bos, [CLS], [SEP], pad, ...) belongs to exactly
one word, so the words' log-probs add up to the caption's: a token with no text of its own (a
lone ``▁`` or ``Ġ``, even the caption's first) belongs to the word that follows it (the last
word, at the end), punctuation to the word before it ("circle." "red-blue"; before the first
word, to the first). Special tokens stay in the token ids (the model reads them) but are never
explained. Words keep the case the model read them in; their text leaves out edge punctuation.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_PUNCTUATION = set(string.punctuation) | {"``", "''", "\u2019", "\u2018", "\u201c", "\u201d"}


@dataclass(frozen=True)
class WordPieces:
    """Words of a token sequence: ``words[w]`` (as decoded, case kept, edge punctuation
    stripped) is made of the tokens at ``spans[w]``; ``unknown`` are the indices of words read
    as the unknown token (a word of its own)."""

    words: tuple[str, ...]
    spans: tuple[tuple[int, ...], ...]
    unknown: tuple[int, ...]


def word_pieces(tokenizer: Any, ids: Sequence[int]) -> WordPieces:
    """Group the token ``ids`` into words (see the module docstring)."""
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    words: list[str] = []
    spans: list[list[int]] = []
    unknown: list[int] = []
    decoded = ""
    open_word = False
    between = ""  # punctuation inside a word ("red-blue"): kept in its text if the word goes on
    pending: list[int] = []  # tokens that belong to the next word (or to the last, at the end)
    for position, token_id in enumerate(ids):
        if token_id in special:
            open_word = False
            continue
        text = _decode(tokenizer, ids[: position + 1])
        added = text[len(decoded) :] if text.startswith(decoded) else _decode(tokenizer, [token_id])
        decoded = text
        is_unknown = token_id == tokenizer.unk_token_id
        if is_unknown:
            added = " " + (added.strip() or str(tokenizer.unk_token))
        continues_word = open_word and not added[:1].isspace()
        piece = added.strip()
        ends_word = added[-1:].isspace() or is_unknown
        if not piece:  # no text of its own: a lone "▁" / "Ġ", or text the next token completes
            pending.append(position)
            open_word = open_word and not ends_word
            continue
        if all(char in _PUNCTUATION for char in piece):
            if spans:  # "circle.", "red-blue", WordPiece's "circle ."
                spans[-1] += [*pending, position]
                pending = []
            else:
                pending.append(position)
            between = between + piece if continues_word else ""
            open_word = continues_word and not ends_word
            continue
        if continues_word:
            words[-1] += between + piece
            spans[-1] += [*pending, position]
        else:
            words.append(piece)
            spans.append([*pending, position])
        between, pending = "", []
        if is_unknown:
            unknown.append(len(words) - 1)
        open_word = not ends_word
    if spans:
        spans[-1] += pending
    texts = [word.strip(string.punctuation) or word for word in words]
    return WordPieces(tuple(texts), tuple(tuple(span) for span in spans), tuple(unknown))


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def encode_words(
    tokenizer: Any, text: str, *, special_tokens: bool, max_length: int | None = None
) -> tuple[list[int], WordPieces]:
    """Token ids of ``text`` and their words; a word read as the unknown token keeps its
    original spelling (from the tokenizer's character offsets, where it has them)."""
    options: dict[str, Any] = {"add_special_tokens": special_tokens}
    if max_length is not None:
        options.update(truncation=True, max_length=max_length)
    try:
        encoding = tokenizer(text, return_offsets_mapping=True, **options)
        offsets = encoding["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError):  # tokenizers without character offsets
        encoding, offsets = tokenizer(text, **options), None
    ids = list(encoding["input_ids"])
    pieces = word_pieces(tokenizer, ids)
    if offsets is not None and pieces.unknown:
        words = list(pieces.words)
        for w in pieces.unknown:
            start, end = offsets[pieces.spans[w][-1]]
            words[w] = text[start:end] or words[w]
        pieces = WordPieces(tuple(words), pieces.spans, pieces.unknown)
    return ids, pieces
