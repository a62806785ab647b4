"""The scorer reads exactly the columns scikit-learn's HashingVectorizer gives, without importing
it (classifiers/features.py), and adds up the same bits: both feature spaces' columns, in the
analyzers' order, against the vectorizer's own analyzer and murmurhash; the batch
probabilities against the sparse count matrix they replaced (issue 20 outcome 1). (That a worker
never imports scikit-learn: tests/test_ingest.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from sklearn.utils import murmurhash3_32

from classifiers.features import CharColumns, Columns, WordColumns, space
from classifiers.fitting import hashing
from classifiers.model import load_model
from classifiers.scoring import HashedScorer, softmax

# Every kind of white space str.split() and the analyzer's \s know, among letters and marks
# (no lone surrogates: murmurhash cannot encode them, by either path).
WHITE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u3000"
TEXTS = st.text(alphabet=st.sampled_from("aZé_-'!9 ") | st.sampled_from(WHITE)
                | st.characters(exclude_categories=("Cs",)), max_size=700)


def _analyzer_columns(part: str, text: str) -> list[int]:
    """scikit-learn's columns: the fitted space's own analyzer, its own murmurhash."""
    vectorizer = hashing(part)
    return [abs(int(murmurhash3_32(token, seed=0))) % vectorizer.n_features
            for token in vectorizer.build_analyzer()(text)]


def _vectorizer_columns(part: str, text: str) -> list[int]:
    """The columns HashingVectorizer.transform counts, each as often as it counts it."""
    row = hashing(part).transform([text])
    return sorted(np.repeat(row.indices, row.data.astype(np.int64)).tolist())


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_char_columns_are_the_char_wb_analyzers_columns_in_its_order(text: str) -> None:
    size, _ = space("char")
    columns = CharColumns(size)
    assert columns(text) == _analyzer_columns("char", text)
    assert columns(text) == _analyzer_columns("char", text)  # from the memo, the same


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_word_columns_are_the_word_analyzers_columns_in_its_order(text: str) -> None:
    size, _ = space("word")
    assert WordColumns(Columns(size))(text) == _analyzer_columns("word", text)


@settings(max_examples=100, deadline=None)
@given(TEXTS)
def test_each_space_counts_what_the_hashing_vectorizer_counts(text: str) -> None:
    for part in ("word", "char"):
        _, columns_of = space(part)
        assert sorted(columns_of(text)) == _vectorizer_columns(part, text)


def test_a_space_is_the_size_the_model_was_fitted_in() -> None:
    for part in ("word", "char"):
        assert space(part)[0] == hashing(part).n_features


def test_a_token_that_cannot_be_utf8_fails_as_in_scikit_learn_not_the_process() -> None:
    with pytest.raises(UnicodeEncodeError):
        hashing("char").transform(["ab\ud800c"])
    _, columns_of = space("char")
    with pytest.raises(UnicodeEncodeError):
        columns_of("ab\ud800c")


def _sparse_proba_many(scorer: HashedScorer, texts: Sequence[str]) -> np.ndarray[Any, Any]:
    """The batch scoring as it was written with a scipy count matrix (before issue 20 outcome
    1), kept here as the reference the numpy version must match bit for bit."""
    decision = np.tile(scorer._intercept, (len(texts), 1))
    for part, (_, size, idf, row_of, coef) in zip(("word", "char"), scorer._single,
                                                  strict=True):
        vectorizer = hashing(part)
        analyzer, column_of = vectorizer.build_analyzer(), Columns(size)
        ids: list[int] = []
        lengths = []
        for text in texts:
            before = len(ids)
            ids.extend(map(column_of.__getitem__, analyzer(text)))
            lengths.append(len(ids) - before)
        rows = np.repeat(np.arange(len(texts)), lengths)
        matrix = sparse.csr_matrix((np.ones(len(ids)), (rows, np.asarray(ids, dtype=np.intp))),
                                   shape=(len(texts), size))
        matrix.data = (1.0 + np.log(matrix.data)) * idf[matrix.indices]
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        norms[norms == 0.0] = 1.0
        coef_rows = row_of[matrix.indices]
        known = coef_rows >= 0
        row_ids = np.repeat(np.arange(len(texts)), np.diff(matrix.indptr))[known]
        weights, known_rows = matrix.data[known], coef[coef_rows[known]]
        for j in range(decision.shape[1]):
            decision[:, j] += np.bincount(row_ids, weights=weights * known_rows[:, j],
                                          minlength=len(texts)) / norms
    return np.asarray(softmax(decision))


def test_batch_probabilities_are_bit_for_bit_the_sparse_matrix_ones(
    default_model_dir: Path,
) -> None:
    scorer = load_model(default_model_dir).scorer
    assert isinstance(scorer, HashedScorer)
    texts = [
        "__email__ __scope_everyone__ The portal is down for everyone since 9am, nobody can "
        "log in. The portal is down! down down down",
        "__sms__ how much is the premium plan? thanks",
        "__voicemail__ ",
        "",
        "x",
        "a long message " * 200,
        "Zürich café: naïve résumé\u2028über\u3000alles\t\tand\x1cmore",
    ] * 3
    assert np.array_equal(scorer.proba_many(texts), _sparse_proba_many(scorer, texts))
    assert np.array_equal(scorer.proba_many(texts[:1]), _sparse_proba_many(scorer, texts[:1]))
