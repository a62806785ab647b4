"""The scorer's fast paths read exactly what scikit-learn's analyzers read and add up the same
bits: the word-by-word char n-gram columns (CharColumns) against the char_wb analyzer, and the
batch probabilities against the sparse count matrix they replaced (issue 20 outcome 1)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse

from classifiers.model import (
    CharColumns,
    CompiledScorer,
    HashedScorer,
    TokenColumns,
    _Columns,
    _hashing,
    load_model,
)

# Every kind of white space str.split() and the analyzer's \s know, among letters and marks
# (no lone surrogates: murmurhash cannot encode them, by either path).
WHITE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u3000"
TEXTS = st.text(alphabet=st.sampled_from("aZé_-'!9 ") | st.sampled_from(WHITE)
                | st.characters(exclude_categories=("Cs",)), max_size=700)


def _analyzer_columns(part: str, text: str) -> list[int]:
    vectorizer = _hashing(part)
    column_of = _Columns(vectorizer.n_features)
    return list(map(column_of.__getitem__, vectorizer.build_analyzer()(text)))


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_char_columns_are_the_char_wb_analyzers_columns_in_its_order(text: str) -> None:
    vectorizer = _hashing("char")
    columns = CharColumns(vectorizer, _Columns(vectorizer.n_features))
    assert columns(text) == _analyzer_columns("char", text)
    assert columns(text) == _analyzer_columns("char", text)  # from the memo, the same


@settings(max_examples=100, deadline=None)
@given(TEXTS)
def test_word_columns_are_the_word_analyzers_columns(text: str) -> None:
    vectorizer = _hashing("word")
    columns = TokenColumns(vectorizer, _Columns(vectorizer.n_features))
    assert columns(text) == _analyzer_columns("word", text)


def _sparse_proba_many(scorer: HashedScorer, texts: Sequence[str]) -> np.ndarray[Any, Any]:
    """The batch scoring as it was written with a scipy count matrix (before issue 20 outcome
    1), kept here as the reference the numpy version must match bit for bit."""
    decision = np.tile(scorer._intercept, (len(texts), 1))
    for part, (_, size, idf, row_of, coef) in zip(("word", "char"), scorer._single,
                                                  strict=True):
        vectorizer = _hashing(part)
        analyzer, column_of = vectorizer.build_analyzer(), _Columns(size)
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
    return np.asarray(CompiledScorer._softmax(decision))


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
