"""The text model: TF-IDF word and character n-grams into a logistic regression over the shipped
model's four levels, plus its versioned, verified storage.

Owns: what the model reads (subject + the first few KB of body, never headers), how it is fitted
(deterministically, fixed random_state, bounded solver iterations), how one message is scored
(`CompiledScorer`: the fitted pipeline's arithmetic without scikit-learn's per-call overhead,
checked against the pipeline when loaded), and how model files are written (tmp + fsync +
rename) and read (sha256 from the manifest checked *before* unpickling). Pickle/joblib is used
only for files this code wrote itself into the gateway's state directory; skops is not
installed. Never imports the gateway or the channels.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import joblib
import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import (
    HashingVectorizer,
    TfidfTransformer,
    TfidfVectorizer,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.utils import murmurhash3_32

from classifiers.types import DEFAULT_LEVELS, TextInput

MANIFEST = "current.json"
# Format 2: smaller features (char n-grams read only the first CHAR_NGRAM_CHARS characters) and a
# capped solver. Format-1 files (before 2026-12) still load and are scored the same way;
# ensure_model replaces a format-1 model that was built from the shipped corpus alone.
# Format 3 (issue 16): the model reads normalised text with the severity dimensions as leading
# tokens (classifiers/reading.py). A default model of an older format is rebuilt at start.
# Format 4 (issue 16, one place for each rule): the dimension tables changed what they read
# (no lone "down" at the end of a long line, no bare "500"...), so the leading tokens of a
# format-3 default model were fitted on other readings; it is rebuilt.
# Format 5 (issue 20 item 4): hashed features (no fitted vocabulary) and a model file of numpy
# arrays (`model-<version>.npz`, loaded with allow_pickle=False: loading runs no code) instead
# of a pickled pipeline. Training 10,000 messages and loading a model got several times
# faster; formats 1-4 (`.joblib`) still load, and a default model of those formats is rebuilt.
FORMAT = 5
READABLE_FORMATS = (1, 2, 3, 4, 5)
DEFAULT_SOURCES = ("shipped train.jsonl", "shipped corpus")
# From this many texts on, probabilities come from one vectorisation of the whole batch.
BATCH_MIN = 16
SUBJECT_CHARS = 256
CHAR_NGRAM_CHARS = 512
WORD_FEATURES = 50_000  # formats 1-4 (fitted vocabulary)
CHAR_FEATURES = 100_000
# Format 5: hashed feature spaces. Collisions are rare at these sizes (the shipped corpus has
# about 40,000 distinct word 1-2 grams and 200,000 char 3-5 grams); only the columns seen in
# training are stored.
WORD_HASH_FEATURES = 1 << 20
CHAR_HASH_FEATURES = 1 << 20
MAX_COLUMNS = 100_000
MAX_ITER = 300
SOLVER_TOL = 1e-3
# Words a sender uses to *claim* urgency. Rules score them as sender_urgency; the model never
# sees them, so it can only learn urgency from what the message describes.
_CLAIMS = re.compile(r"\b(?:urgent(?:ly)?|asap|important|high priority)\b|!{2,}", re.IGNORECASE)


class ModelFileError(Exception):
    """A model file is missing, altered or unreadable; the caller keeps the model it has."""


def model_text(subject: str, body: str, channel: str, body_chars: int = 2048,
               features: str = "") -> str:
    """What the model reads: channel token, feature tokens (the severity dimensions), then the
    subject and the start of the body with the sender's urgency claims removed."""
    text = f"{subject[:SUBJECT_CHARS]}\n{body[:body_chars]}"
    head = f"__{channel}__ {features} " if features else f"__{channel}__ "
    return head + (_CLAIMS.sub(" ", text) if _may_claim(text) else text)


def _may_claim(text: str) -> bool:
    """False only if `_CLAIMS` cannot match: an ASCII text whose lower-cased form holds none
    of its words. (Under re.IGNORECASE an `s` also matches the non-ASCII long s and an `i` the
    dotless i, which lower() keeps apart: any other text is searched by the regex itself.)
    The case-insensitive regex cost more than every other step of model_text together."""
    if not text.isascii():
        return True
    low = text.lower()
    return any(word in low for word in _CLAIM_WORDS)


_CLAIM_WORDS = ("urgent", "asap", "important", "high priority", "!!")


def text_of(inp: TextInput, body_chars: int = 2048) -> str:
    return model_text(inp.subject, inp.body, inp.channel, body_chars)


def lowered_head(text: str, chars: int) -> str:
    """The char n-gram vectorizer's preprocessor: lower-cased, first `chars` characters only.
    (Module-level so fitted pipelines pickle; its `chars` is stored in each model file.)"""
    return text[:chars].lower()


WORD_TOKENS = r"(?u)\b\w[\w']*\b"


def _hashing(part: str) -> HashingVectorizer:
    """The two feature spaces, by name; the same code builds them for fitting and for loading
    a model file (which stores only arrays)."""
    if part == "word":
        return HashingVectorizer(ngram_range=(1, 2), lowercase=True, token_pattern=WORD_TOKENS,
                                 alternate_sign=False, norm=None, n_features=WORD_HASH_FEATURES)
    if part == "char":
        return HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False,
                                 norm=None, n_features=CHAR_HASH_FEATURES,
                                 preprocessor=functools.partial(lowered_head,
                                                                chars=CHAR_NGRAM_CHARS))
    raise ValueError(part)


HASHED_PARTS = ("word", "char")


class _Columns(dict[str, int]):
    """token -> the column HashingVectorizer(alternate_sign=False) gives it (its C loop takes
    abs() of the signed 32-bit murmurhash). A dict that fills itself: n-grams recur from
    message to message, so scoring costs C-level dictionary look-ups, as with a fitted
    vocabulary; bounded, past MEMO_TOKENS a token is hashed each time."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n_features = n_features

    def __missing__(self, token: str) -> int:
        column = abs(int(murmurhash3_32(token, seed=0))) % self.n_features
        if len(self) < MEMO_TOKENS:
            self[token] = column
        return column


MEMO_TOKENS = 1 << 17  # per feature space: about 15 MB of strings at most
MEMO_WORDS = 1 << 16  # words whose char n-gram columns are kept: about 10 MB at most


class _WordGrams(dict[str, tuple[int, ...]]):
    """word -> the columns of its char_wb n-grams, in the order the analyzer gives them. A dict
    that fills itself (bounded by MEMO_WORDS, like _Columns)."""

    def __init__(self, grams: Any, column_of: _Columns) -> None:
        super().__init__()
        self._grams = grams
        self._column_of = column_of

    def __missing__(self, word: str) -> tuple[int, ...]:
        columns = tuple(map(self._column_of.__getitem__, self._grams(word)))
        if len(self) < MEMO_WORDS:
            self[word] = columns
        return columns


class CharColumns:
    """The char_wb analyzer's columns for a text, word by word from a memo: the same columns in
    the same order as `map(column_of, analyzer(text))`, about ten times faster.

    char_wb n-grams never cross a word: the analyzer splits the preprocessed text on white space
    (`str.split()`, after collapsing runs of white space, which changes no split) and pads each
    word with one space, so a text's n-grams are its words' n-grams one after the other. Words
    recur from message to message far more than texts do, and slicing each into n-grams was
    the model's largest cost (issue 20 outcome 1). A word's n-grams come from scikit-learn's
    own `_char_wb_ngrams` on that word alone, so they cannot disagree with the analyzer's;
    tests/classifiers/test_model_columns.py checks texts of every kind of white space."""

    def __init__(self, vectorizer: HashingVectorizer, column_of: _Columns) -> None:
        self._preprocess = vectorizer.build_preprocessor()
        self._words = _WordGrams(vectorizer._char_wb_ngrams, column_of)

    def __call__(self, text: str) -> list[int]:
        return list(itertools.chain.from_iterable(
            map(self._words.__getitem__, self._preprocess(text).split())))


class TokenColumns:
    """Any analyzer's columns for a text: each token through the self-filling `_Columns`."""

    def __init__(self, vectorizer: HashingVectorizer, column_of: _Columns) -> None:
        self._analyzer = vectorizer.build_analyzer()
        self._column_of = column_of

    def __call__(self, text: str) -> list[int]:
        return list(map(self._column_of.__getitem__, self._analyzer(text)))


def _columns(vectorizer: HashingVectorizer, column_of: _Columns) -> Any:
    """How a feature space's columns are read from a text: word by word for char_wb."""
    if vectorizer.analyzer == "char_wb":
        return CharColumns(vectorizer, column_of)
    return TokenColumns(vectorizer, column_of)


def _params(vectorizer: HashingVectorizer) -> dict[str, object]:
    """A hashing vectorizer's parameters, its preprocessor's by value (partials compare by
    identity)."""
    params = dict(vectorizer.get_params())
    pre = params.pop("preprocessor", None)
    params["preprocessor"] = (pre.func, pre.keywords) if isinstance(pre, functools.partial) else pre
    return params


class SeenColumns(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Keeps the `max_columns` hashed columns that occur in the most training texts (ties:
    lower column first), as the vocabulary models kept their 50,000 + 100,000 most frequent
    terms. The solver then works on that many coefficients per level instead of two million:
    lbfgs's own vector arithmetic on the full hashed space cost more than the gradients."""

    def __init__(self, max_columns: int = MAX_COLUMNS) -> None:
        self.max_columns = max_columns

    def fit(self, x: Any, y: Any = None) -> SeenColumns:
        df = sparse.csc_matrix(x).getnnz(axis=0)
        seen = np.flatnonzero(df)
        if seen.size > self.max_columns:
            order = np.argsort(-df[seen], kind="stable")[: self.max_columns]
            seen = np.sort(seen[order])
        self.columns_ = seen
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, x: Any) -> Any:
        return sparse.csr_matrix(x)[:, self.columns_]


def new_pipeline(seed: int = 0) -> Pipeline:
    """Word 1-2 grams + char_wb 3-5 grams of the first CHAR_NGRAM_CHARS characters, hashed
    (no vocabulary to fit or store), sublinear TF-IDF, balanced class weights, lbfgs stopped at
    SOLVER_TOL or MAX_ITER iterations.

    Sized for speed (issue 20 item 4: training on 10,000 messages < 15 s, model load < 100 ms):
    cProfile of the format-4 pipeline on 10,000 messages spent half the time building the
    char n-gram vocabulary (a Python dict over 10 million n-grams) and half in the solver;
    hashing does the first in C, the looser tolerance stops the solver sooner. Both checked
    on leave-one-domain-out (docs/classifier.md)."""
    features = FeatureUnion(
        [(part, Pipeline([("hash", _hashing(part)),
                          ("tfidf", TfidfTransformer(sublinear_tf=True))]))
         for part in HASHED_PARTS]
    )
    clf = LogisticRegression(C=8.0, max_iter=MAX_ITER, tol=SOLVER_TOL, class_weight="balanced",
                             random_state=seed)
    return Pipeline([("features", features), ("seen", SeenColumns()), ("clf", clf)])


class Scorer(Protocol):
    classes: list[str]

    def proba(self, text: str) -> np.ndarray[Any, Any]: ...

    def proba_many(self, texts: Sequence[str]) -> np.ndarray[Any, Any]: ...


class HashedScorer:
    """Probabilities from a format-5 model's arrays: hashed counts -> sublinear TF * IDF, L2
    per feature space -> sparse product with the coefficients of the columns seen in training
    -> softmax. Built from a fitted pipeline (`compile_scorer`, checked against predict_proba)
    or from a model file's arrays (`load_model`); `arrays()` is what a model file stores."""

    def __init__(self, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
        self._arrays = arrays
        self.classes = [str(c) for c in arrays["classes"]]
        self._intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        k = self._intercept.shape[0]
        # Per feature space: text -> columns, the space's size, IDF, column -> coef row, coef.
        self._single: list[tuple[Any, int, np.ndarray[Any, Any], np.ndarray[Any, Any],
                                 np.ndarray[Any, Any]]] = []
        for part in HASHED_PARTS:
            vectorizer = _hashing(part)
            size = vectorizer.n_features
            cols = np.asarray(arrays[f"{part}_cols"], dtype=np.int64)
            idf_cols = np.asarray(arrays[f"{part}_idf_cols"], dtype=np.int64)
            for c in (cols, idf_cols):
                if c.size and (c.min() < 0 or c.max() >= size):
                    raise ValueError(f"{part}: column out of range")
            idf = np.full(size, float(arrays[f"{part}_idf_default"]))
            idf[idf_cols] = arrays[f"{part}_idf"]
            coef = np.asarray(arrays[f"{part}_coef"], dtype=np.float64).reshape(len(cols), k)
            row_of = np.full(size, -1, dtype=np.int32)  # column -> row of `coef`, -1: none
            row_of[cols] = np.arange(len(cols), dtype=np.int32)
            self._single.append((_columns(vectorizer, _Columns(size)), size, idf, row_of, coef))

    def arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        return self._arrays

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> HashedScorer:
        features, clf = pipeline.named_steps["features"], pipeline.named_steps["clf"]
        seen = pipeline.named_steps["seen"]
        compact = np.asarray(clf.coef_, dtype=np.float64)
        coef = np.zeros((compact.shape[0], seen.n_features_in_))
        coef[:, seen.columns_] = compact
        arrays: dict[str, np.ndarray[Any, Any]] = {
            "classes": np.asarray([str(c) for c in clf.classes_]),
            "intercept": np.asarray(clf.intercept_, dtype=np.float64),
        }
        offset = 0
        for (name, sub), part in zip(features.transformer_list, HASHED_PARTS, strict=True):
            hasher, tfidf = sub.named_steps["hash"], sub.named_steps["tfidf"]
            if name != part or _params(hasher) != _params(_hashing(part)) or not (
                tfidf.sublinear_tf and tfidf.use_idf and tfidf.norm == "l2"
            ):
                raise ValueError(f"{name}: not the feature space this code builds")
            idf = np.asarray(tfidf.idf_, dtype=np.float64)
            block = coef[:, offset:offset + idf.shape[0]].T
            # A column no training text has carries the largest IDF (document frequency 0);
            # only the IDF of the others is stored, and coefficients only where not zero.
            default = float(idf.max())
            seen = np.flatnonzero(idf < default)
            kept = np.flatnonzero(np.any(block != 0.0, axis=1))
            arrays[f"{part}_idf_cols"] = seen.astype(np.int32)
            arrays[f"{part}_idf"] = idf[seen]
            arrays[f"{part}_cols"] = kept.astype(np.int32)
            arrays[f"{part}_coef"] = np.ascontiguousarray(block[kept])
            arrays[f"{part}_idf_default"] = np.asarray(default)
            offset += idf.shape[0]
        if offset != coef.shape[1]:
            raise ValueError("coefficients do not match the feature spaces")
        return cls(arrays)

    def proba(self, text: str) -> np.ndarray[Any, Any]:
        """One message without scikit-learn's per-call overhead (the gateway classifies one
        message at a time): analyzer -> cached hash -> sublinear TF * IDF, L2 -> coefficients."""
        decision = self._intercept.copy()
        for columns_of, _, idf, row_of, coef in self._single:
            columns = columns_of(text)
            if not columns:
                continue
            unique, counts = np.unique(np.asarray(columns, dtype=np.intp), return_counts=True)
            weights = (1.0 + np.log(counts)) * idf[unique]
            norm = float(np.sqrt(weights @ weights))
            rows = row_of[unique]
            known = rows >= 0
            if norm > 0.0 and known.any():
                decision += (weights[known] / norm) @ coef[rows[known]]
        return np.asarray(CompiledScorer._softmax(decision[np.newaxis, :])[0])

    def proba_many(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """A batch: the counts of every (text, column) pair of a feature space at once, TF-IDF
        and L2 on all columns, one product with the coefficients of the columns seen in
        training.

        The counts are the entries of the batch's sparse count matrix in its canonical order
        (by text, then column), from one sort of the pairs; each sum below adds them in that
        order, so the probabilities are bit for bit what the scipy matrix gave (its
        construction cost more than the arithmetic on these small batches)."""
        decision = np.tile(self._intercept, (len(texts), 1))
        for columns_of, size, idf, row_of, coef in self._single:
            per_text = [columns_of(text) for text in texts]
            rows = np.repeat(np.arange(len(texts), dtype=np.int64), list(map(len, per_text)))
            keys = rows * size + np.fromiter(itertools.chain.from_iterable(per_text),
                                             dtype=np.int64, count=len(rows))
            pairs, counts = np.unique(keys, return_counts=True)
            text_of, column = np.divmod(pairs, size)
            data = (1.0 + np.log(counts.astype(np.float64))) * idf[column]
            norms = np.sqrt(_row_sums(data * data, text_of, len(texts)))
            norms[norms == 0.0] = 1.0
            coef_rows = row_of[column]
            known = coef_rows >= 0
            row_ids = text_of[known]
            weights, known_rows = data[known], coef[coef_rows[known]]
            for j in range(decision.shape[1]):
                decision[:, j] += np.bincount(row_ids, weights=weights * known_rows[:, j],
                                              minlength=len(texts)) / norms
        return CompiledScorer._softmax(decision)


def _row_sums(values: np.ndarray[Any, Any], rows: np.ndarray[Any, Any],
              n_rows: int) -> np.ndarray[Any, Any]:
    """Sum of `values` per row, `rows` sorted: one np.add.reduceat over each row's run, as
    scipy's csr `sum(axis=1)` does (reduceat sums pairwise, not left to right, so this is
    the summation that gives the same bits)."""
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    present = np.flatnonzero(counts)
    sums = np.zeros(n_rows)
    if present.size:
        sums[present] = np.add.reduceat(values, starts[present])
    return sums


class CompiledScorer:
    """One message's probabilities from a fitted word/char TF-IDF + LogisticRegression pipeline,
    computed directly: analyzer -> vocabulary ids -> sublinear TF * IDF, L2 per vectorizer ->
    dot with the coefficients -> softmax. scikit-learn's predict_proba spends milliseconds per
    call on validation, sparse-matrix building and FeatureUnion bookkeeping; this does not.

    `compile_scorer` builds one only for the pipeline shape it knows and checks it against
    predict_proba on probe texts, so a scorer never disagrees with the model it came from."""

    def __init__(self, parts: list[tuple[Any, dict[str, int], np.ndarray[Any, Any],
                                         np.ndarray[Any, Any]]],
                 intercept: np.ndarray[Any, Any], classes: list[str]) -> None:
        self._parts = parts  # (analyzer, vocabulary, idf, coef^T rows for that vocabulary)
        self._intercept = intercept
        self.classes = classes

    def proba(self, text: str) -> np.ndarray[Any, Any]:
        decision = self._intercept.copy()
        for analyzer, vocabulary, idf, coef_t in self._parts:
            get = vocabulary.get
            ids = [i for i in map(get, analyzer(text)) if i is not None]
            if not ids:
                continue
            unique, counts = np.unique(np.asarray(ids, dtype=np.intp), return_counts=True)
            weights = (1.0 + np.log(counts)) * idf[unique]
            norm = float(np.sqrt(weights @ weights))
            if norm > 0.0:
                decision += (weights / norm) @ coef_t[unique]
        return np.asarray(self._softmax(decision[np.newaxis, :])[0])

    def proba_many(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """Rows of probabilities for a batch: one vectorisation of all the texts into one
        sparse matrix per vectorizer, then one sparse product with the coefficients."""
        decision = np.tile(self._intercept, (len(texts), 1))
        for analyzer, vocabulary, idf, coef_t in self._parts:
            get = vocabulary.get
            ids: list[int] = []
            lengths = []
            for text in texts:
                before = len(ids)
                ids.extend(map(get, analyzer(text), itertools.repeat(-1)))  # -1: not a feature
                lengths.append(len(ids) - before)
            columns = np.asarray(ids, dtype=np.intp)
            rows = np.repeat(np.arange(len(texts)), lengths)
            known = columns >= 0
            matrix = sparse.csr_matrix(  # duplicates are summed: data are the term counts
                (np.ones(int(known.sum())), (rows[known], columns[known])),
                shape=(len(texts), len(vocabulary)))
            matrix.data = (1.0 + np.log(matrix.data)) * idf[matrix.indices]
            norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
            norms[norms == 0.0] = 1.0
            matrix = sparse.diags(1.0 / norms) @ matrix
            decision += matrix @ coef_t
        return self._softmax(decision)

    @staticmethod
    def _softmax(decision: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if decision.shape[1] == 1:  # binary: sklearn's coef_ has one row for classes_[1]
            p1 = 1.0 / (1.0 + np.exp(-decision[:, 0]))
            return np.column_stack([1.0 - p1, p1])
        decision = decision - decision.max(axis=1, keepdims=True)
        exp = np.exp(decision)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))


_PROBES = ("__email__ The portal is down for everyone since 9am, nobody can log in.",
           "__sms__ how much is the premium plan? thanks", "__voicemail__ ", "x")


def _agrees(scorer: Scorer, pipeline: Any) -> bool:
    expected = pipeline.predict_proba(list(_PROBES))
    for text, row in zip(_PROBES, expected, strict=True):
        if not np.allclose(scorer.proba(text), row, rtol=1e-6, atol=1e-9):
            return False
    return bool(np.allclose(scorer.proba_many(list(_PROBES)), expected, rtol=1e-6, atol=1e-9))


def compile_scorer(pipeline: Any) -> Scorer | None:
    """A scorer for `pipeline` (HashedScorer for format 5, CompiledScorer for the vocabulary
    pipelines of formats 1-4), or None if its shape is not one this code knows or the scorer
    disagrees with predict_proba (then the caller uses predict_proba)."""
    try:
        features, clf = pipeline.named_steps["features"], pipeline.named_steps["clf"]
        if "seen" in pipeline.named_steps and all(
                isinstance(sub, Pipeline) for _, sub in features.transformer_list):
            hashed = HashedScorer.from_pipeline(pipeline)
            return hashed if _agrees(hashed, pipeline) else None
        if not isinstance(features, FeatureUnion) or not isinstance(clf, LogisticRegression):
            return None
        coef = np.asarray(clf.coef_, dtype=np.float64)
        parts = []
        offset = 0
        for _, vec in features.transformer_list:
            if not isinstance(vec, TfidfVectorizer) or not (
                vec.sublinear_tf and vec.use_idf and vec.norm == "l2" and not vec.binary
            ):
                return None
            size = len(vec.vocabulary_)
            parts.append((vec.build_analyzer(), dict(vec.vocabulary_),
                          np.asarray(vec.idf_, dtype=np.float64),
                          np.ascontiguousarray(coef[:, offset:offset + size].T)))
            offset += size
        if offset != coef.shape[1] or features.transformer_weights:
            return None
        scorer = CompiledScorer(parts, np.asarray(clf.intercept_, dtype=np.float64),
                                [str(c) for c in clf.classes_])
        expected = pipeline.predict_proba(list(_PROBES))
        for text, row in zip(_PROBES, expected, strict=True):
            if not np.allclose(scorer.proba(text), row, rtol=1e-6, atol=1e-9):
                return None
        if not np.allclose(scorer.proba_many(list(_PROBES)), expected, rtol=1e-6, atol=1e-9):
            return None
        return scorer
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class LoadedModel:
    version: str
    levels: tuple[str, ...]
    trained_examples: int
    # A fitted sklearn Pipeline (sklearn ships no type information); None for a model loaded
    # from a format-5 file, which holds only the scorer's arrays.
    pipeline: Any
    sha256: str
    scorer: Scorer | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scorer is None and self.pipeline is not None:
            object.__setattr__(self, "scorer", compile_scorer(self.pipeline))

    def probabilities(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """Rows of probabilities in `self.levels` order."""
        if self.scorer is not None and len(texts) < BATCH_MIN:
            classes = self.scorer.classes
            proba = np.array([self.scorer.proba(t) for t in texts]).reshape(
                len(texts), len(classes))
        elif self.scorer is not None:
            classes = self.scorer.classes
            proba = self.scorer.proba_many(texts)
        else:
            proba = self.pipeline.predict_proba(list(texts))
            classes = [str(c) for c in self.pipeline.classes_]
        out = np.zeros((len(texts), len(self.levels)))
        for i, level in enumerate(self.levels):
            if level in classes:
                out[:, i] = proba[:, classes.index(level)]
        return out

    def predict(self, texts: Sequence[str]) -> list[str]:
        proba = self.probabilities(texts)
        return [self.levels[i] for i in proba.argmax(axis=1)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, write: Any) -> None:
    """tmp file in the same directory, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def model_dir_lock(model_dir: Path) -> Iterator[None]:
    """One writer at a time (two instances starting together must not both build a model)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with (model_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def next_version(model_dir: Path, today: dt.date | None = None) -> str:
    day = (today or dt.datetime.now(dt.UTC).date()).isoformat()
    taken = [p.name for p in model_dir.glob(f"model-{day}.*")]
    numbers = [int(m.group(1)) for n in taken
               if (m := re.search(r"\.(\d+)\.(?:joblib|npz)$", n))]
    return f"{day}.{max(numbers, default=0) + 1}"


def save_model(model_dir: Path, pipeline: Any, levels: Sequence[str], trained_examples: int,
               extra: dict[str, object] | None = None) -> LoadedModel:
    """Write a new model file and then point the manifest at it (the rename is the commit).

    The caller holds model_dir_lock."""
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    scorer = compile_scorer(pipeline)
    if isinstance(scorer, HashedScorer):
        # Format 5: numpy arrays only (uncompressed: a load is a few reads, no unpickling).
        path = model_dir / f"model-{version}.npz"
        arrays = scorer.arrays()
        _write_atomically(path, lambda fh: np.savez(
            fh, allow_pickle=False, **arrays))
    else:  # a vocabulary pipeline (formats 1-4; tests of old model directories)
        path = model_dir / f"model-{version}.joblib"
        _write_atomically(path, lambda fh: joblib.dump(pipeline, fh, compress=3))
    sha = _sha256(path)
    manifest = {
        "format": FORMAT,
        "version": version,
        "file": path.name,
        "sha256": sha,
        "levels": list(levels),
        "trained_examples": trained_examples,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    data = json.dumps(manifest, indent=2).encode()
    _write_atomically(model_dir / MANIFEST, lambda fh: fh.write(data))
    return LoadedModel(version, tuple(levels), trained_examples, pipeline, sha, scorer)


def has_model(model_dir: Path) -> bool:
    return (model_dir / MANIFEST).is_file()


def is_outdated_default(model_dir: Path) -> bool:
    """True if the current model is an older format *and* was built from the shipped corpus
    alone: rebuilding it loses nothing. (A model trained on agents' corrections is kept; it
    still loads, and `train` replaces it.)"""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("format") != FORMAT
            and manifest.get("format") in READABLE_FORMATS
            and manifest.get("source") in DEFAULT_SOURCES)


def load_model(model_dir: Path) -> LoadedModel:
    """Load the current model, refusing any file whose sha256 differs from the manifest."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{model_dir / MANIFEST}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        raise ModelFileError(f"{model_dir / MANIFEST}: not a manifest of format "
                             f"{' or '.join(map(str, READABLE_FORMATS))}")
    name = manifest.get("file")
    if not isinstance(name, str) or "/" in name or not name.endswith((".joblib", ".npz")):
        raise ModelFileError(f"{model_dir / MANIFEST}: bad file name {name!r}")
    path = model_dir / name
    try:
        actual = _sha256(path)
    except OSError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    if actual != manifest.get("sha256"):
        # Never unpickle a file we cannot prove we wrote: unpickling runs code.
        raise ModelFileError(f"{path}: sha256 {actual} does not match the manifest; not loaded")
    levels = manifest.get("levels")
    if not isinstance(levels, list) or set(levels) - set(DEFAULT_LEVELS):
        raise ModelFileError(f"{model_dir / MANIFEST}: bad levels {levels!r}")
    if name.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                scorer = HashedScorer({key: data[key] for key in data.files})
        except Exception as exc:  # a verified file that still fails: another numpy etc.
            raise ModelFileError(f"{path}: cannot load: {exc}") from exc
        return LoadedModel(str(manifest["version"]), tuple(levels),
                           int(manifest.get("trained_examples", 0)), None, actual, scorer)
    try:
        pipeline = joblib.load(path)
    except Exception as exc:  # a verified file that still fails: wrong sklearn version etc.
        raise ModelFileError(f"{path}: cannot load: {exc}") from exc
    return LoadedModel(
        str(manifest["version"]), tuple(levels), int(manifest.get("trained_examples", 0)),
        pipeline, actual,
    )
