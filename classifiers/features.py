"""The model's two hashed feature spaces as the scorer reads them: which columns a text's word
1-2 grams and char_wb 3-5 grams fall in.

Owns: the spaces' parameters (one place: `classifiers.fitting` builds scikit-learn's
HashingVectorizer from these constants to fit a model), the tokens a text gives in each space,
and each token's column: the signed 32-bit MurmurHash3 (seed 0) of its UTF-8, abs() modulo the
space's size, which is what HashingVectorizer(alternate_sign=False) computes.

Never imports scikit-learn or scipy. Importing scikit-learn pulled in scipy.stats and cost every
worker start about a second (issue 20: `gateway worker --drain` in the pipe figure), and scoring
needs none of their code: the tokens are a lower-case, a regular expression and slices, the hash
is `mmh3`'s. tests/classifiers/test_model_columns.py checks both spaces against
HashingVectorizer itself on generated texts, token order and columns included.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import mmh3

HASHED_PARTS = ("word", "char")
WORD_TOKENS = r"(?u)\b\w[\w']*\b"
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (3, 5)
CHAR_NGRAM_CHARS = 512
# Collisions are rare at these sizes (the shipped corpus has about 40,000 distinct word 1-2
# grams and 200,000 char 3-5 grams); only the columns seen in training are stored.
WORD_HASH_FEATURES = 1 << 20
CHAR_HASH_FEATURES = 1 << 20
MEMO_TOKENS = 1 << 17  # per feature space: about 15 MB of strings at most
MEMO_WORDS = 1 << 16  # words whose char n-gram columns are kept: about 10 MB at most

_find_words = re.compile(WORD_TOKENS).findall


def lowered_head(text: str, chars: int) -> str:
    """The char n-gram space's preprocessor: lower-cased, first `chars` characters only.
    (Module-level so fitted pipelines pickle; model files of formats 1-4 name it as
    `classifiers.model.lowered_head`, which still resolves.)"""
    return text[:chars].lower()


def column(token: str, n_features: int) -> int:
    """HashingVectorizer's column for `token` (its C loop hashes the UTF-8 and takes abs() of
    the signed hash; Python's abs(-2**31) % n is the value its special case gives). The bytes
    are encoded here: a lone surrogate raises UnicodeEncodeError, as in scikit-learn, where
    mmh3's own str path would crash the process."""
    return abs(mmh3.hash(token.encode("utf-8"), 0, True)) % n_features


class Columns(dict[str, int]):
    """token -> column, a dict that fills itself: n-grams recur from message to message, so
    scoring costs C-level dictionary look-ups, as with a fitted vocabulary. Bounded: past
    MEMO_TOKENS a token is hashed each time."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n_features = n_features

    def __missing__(self, token: str) -> int:
        found = column(token, self.n_features)
        if len(self) < MEMO_TOKENS:
            self[token] = found
        return found


def word_tokens(text: str) -> list[str]:
    """The word space's tokens, in HashingVectorizer's order: the lower-cased text's words,
    then each pair of neighbours joined by one space."""
    words = _find_words(text.lower())
    return words + [" ".join(pair) for pair in itertools.pairwise(words)]


def char_wb_grams(word: str) -> list[str]:
    """One word's char_wb 3-5 grams in scikit-learn's order: the word padded with one space
    each side, every n-gram of each length, a word shorter than n counted once."""
    padded = f" {word} "
    size = len(padded)
    grams = []
    for n in range(CHAR_NGRAMS[0], CHAR_NGRAMS[1] + 1):
        if size <= n:  # the whole padded word, once, and no longer grams
            grams.append(padded)
            break
        grams.extend(padded[i:i + n] for i in range(size - n + 1))
    return grams


class _WordGrams(dict[str, tuple[int, ...]]):
    """word -> the columns of its char_wb n-grams in order; fills itself, bounded by
    MEMO_WORDS like Columns. A new word's n-grams are hashed directly, not through a token
    memo: this memo already keeps them, and the other's inserts cost more than the hashes
    (a worker just started meets thousands of new words)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self._n_features = n_features

    def __missing__(self, word: str) -> tuple[int, ...]:
        n_features = self._n_features
        columns = tuple([column(gram, n_features) for gram in char_wb_grams(word)])
        if len(self) < MEMO_WORDS:
            self[word] = columns
        return columns


class CharColumns:
    """The char space's columns for a text, word by word from a memo.

    char_wb n-grams never cross a word: the analyzer splits the preprocessed text on white space
    (`str.split()`, after collapsing runs of white space, which changes no split) and pads each
    word, so a text's n-grams are its words' n-grams one after the other. Words recur from
    message to message far more than texts do, and slicing each into n-grams was the model's
    largest cost (issue 20 outcome 1)."""

    def __init__(self, n_features: int) -> None:
        self._words = _WordGrams(n_features)

    def __call__(self, text: str) -> list[int]:
        return list(itertools.chain.from_iterable(
            map(self._words.__getitem__, lowered_head(text, CHAR_NGRAM_CHARS).split())))


class WordColumns:
    """The word space's columns for a text: each token through the self-filling Columns."""

    def __init__(self, column_of: Columns) -> None:
        self._column_of = column_of

    def __call__(self, text: str) -> list[int]:
        return list(map(self._column_of.__getitem__, word_tokens(text)))


def space(part: str) -> tuple[int, Callable[[str], list[int]]]:
    """A feature space by name: its size and a fresh text -> columns reader."""
    if part == "word":
        return WORD_HASH_FEATURES, WordColumns(Columns(WORD_HASH_FEATURES))
    if part == "char":
        return CHAR_HASH_FEATURES, CharColumns(CHAR_HASH_FEATURES)
    raise ValueError(part)
