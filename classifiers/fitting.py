"""Fitting the text model with scikit-learn, and scoring pipelines that are not format 5.

Owns: the pipeline a model is fitted with (`new_pipeline`: the feature spaces of
classifiers.features, sublinear TF-IDF, the columns seen in training, a logistic regression),
turning a fitted pipeline into the arrays a format-5 model file stores (`hashed_scorer`,
checked against predict_proba), and `CompiledScorer` for the vocabulary pipelines of formats
1-4. The only module of the classifier that imports scikit-learn or scipy at its top: training,
evaluation and loading an old-format model import it, scoring a format-5 model never does
(issue 20: that import cost every worker start about a second). Imports the scorer, never
the model files' storage (classifiers.model imports this module). Never imports the gateway.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

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

from classifiers.features import (
    CHAR_HASH_FEATURES,
    CHAR_NGRAM_CHARS,
    CHAR_NGRAMS,
    HASHED_PARTS,
    WORD_HASH_FEATURES,
    WORD_NGRAMS,
    WORD_TOKENS,
    lowered_head,
)
from classifiers.scoring import HashedScorer, Scorer, softmax

MAX_COLUMNS = 100_000
MAX_ITER = 300
SOLVER_TOL = 1e-3


def hashing(part: str) -> HashingVectorizer:
    """The two feature spaces, by name, as scikit-learn fits them: the parameters are
    classifiers.features' constants, which the scorer reads the same way."""
    if part == "word":
        return HashingVectorizer(ngram_range=WORD_NGRAMS, lowercase=True, token_pattern=WORD_TOKENS,
                                 alternate_sign=False, norm=None, n_features=WORD_HASH_FEATURES)
    if part == "char":
        return HashingVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, alternate_sign=False,
                                 norm=None, n_features=CHAR_HASH_FEATURES,
                                 preprocessor=functools.partial(lowered_head,
                                                                chars=CHAR_NGRAM_CHARS))
    raise ValueError(part)



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
        [(part, Pipeline([("hash", hashing(part)),
                          ("tfidf", TfidfTransformer(sublinear_tf=True))]))
         for part in HASHED_PARTS]
    )
    clf = LogisticRegression(C=8.0, max_iter=MAX_ITER, tol=SOLVER_TOL, class_weight="balanced",
                             random_state=seed)
    return Pipeline([("features", features), ("seen", SeenColumns()), ("clf", clf)])


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
        return np.asarray(softmax(decision[np.newaxis, :])[0])

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
        return softmax(decision)


def hashed_scorer(pipeline: Any) -> HashedScorer:
    """The format-5 scorer of a fitted `new_pipeline`: the arrays a model file stores."""
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
        if name != part or _params(hasher) != _params(hashing(part)) or not (
            tfidf.sublinear_tf and tfidf.use_idf and tfidf.norm == "l2"
        ):
            raise ValueError(f"{name}: not the feature space this code builds")
        idf = np.asarray(tfidf.idf_, dtype=np.float64)
        block = coef[:, offset:offset + idf.shape[0]].T
        # A column no training text has carries the largest IDF (document frequency 0);
        # only the IDF of the others is stored, and coefficients only where not zero.
        default = float(idf.max())
        known = np.flatnonzero(idf < default)
        kept = np.flatnonzero(np.any(block != 0.0, axis=1))
        arrays[f"{part}_idf_cols"] = known.astype(np.int32)
        arrays[f"{part}_idf"] = idf[known]
        arrays[f"{part}_cols"] = kept.astype(np.int32)
        arrays[f"{part}_coef"] = np.ascontiguousarray(block[kept])
        arrays[f"{part}_idf_default"] = np.asarray(default)
        offset += idf.shape[0]
    if offset != coef.shape[1]:
        raise ValueError("coefficients do not match the feature spaces")
    return HashedScorer(arrays)


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
            hashed = hashed_scorer(pipeline)
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

