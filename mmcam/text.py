"""Word tokenization shared by captions and questions.

nltk's Treebank tokenizer is rule-based and needs no downloaded data (``word_tokenize`` would need
the punkt models). Words are lower-cased punctuation at the edges of a token is
stripped and tokens made only of punctuation are dropped, so
``"A red circle."`` and ``"a red circle"`` give the same words.
"""

from __future__ import annotations

import string

from nltk.tokenize import TreebankWordTokenizer

_TOKENIZER = TreebankWordTokenizer()
_PUNCTUATION = set(string.punctuation) | {"``", "''"}
# The Treebank rules leave a sentence-internal full stop attached ("red." before more text).
_EDGE_PUNCTUATION = string.punctuation.replace("'", "")


def tokenize(text: str) -> list[str]:
    """Lower-cased words of ``text``; punctuation-only tokens are dropped."""
    tokens = (token.strip(_EDGE_PUNCTUATION) for token in _TOKENIZER.tokenize(text.lower()))
    return [token for token in tokens if token and not all(char in _PUNCTUATION for char in token)]
