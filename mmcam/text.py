"""Word tokenization shared by captions and questions.

nltk's Treebank tokenizer is rule-based and needs no downloaded data (``word_tokenize`` would need
the punkt models). Words are lower-cased and tokens made only of punctuation are dropped, so
``"A red circle."`` and ``"a red circle"`` give the same words.
"""

from __future__ import annotations

import string

from nltk.tokenize import TreebankWordTokenizer

_TOKENIZER = TreebankWordTokenizer()
_PUNCTUATION = set(string.punctuation) | {"``", "''"}


def tokenize(text: str) -> list[str]:
    """Lower-cased words of ``text``; punctuation-only tokens are dropped."""
    tokens = _TOKENIZER.tokenize(text.lower())
    return [token for token in tokens if not all(char in _PUNCTUATION for char in token)]
