"""Scoring a format-5 model: a message's probabilities from the model file's arrays.

Owns `HashedScorer` (hashed word and char n-gram counts -> sublinear TF-IDF, L2 per feature
space -> the coefficients of the columns seen in training -> softmax, one message or a batch)
and the `Scorer` protocol every scorer meets. numpy only: never imports scikit-learn or scipy
(classifiers/fitting.py does, to fit a model and turn it into these arrays), never the model
files' storage (classifiers/model.py) or the gateway.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from classifiers.features import HASHED_PARTS, space


class Scorer(Protocol):
    classes: list[str]

    def proba(self, text: str) -> np.ndarray[Any, Any]: ...

    def proba_many(self, texts: Sequence[str]) -> np.ndarray[Any, Any]: ...


class HashedScorer:
    """Probabilities from a format-5 model's arrays: hashed counts -> sublinear TF * IDF, L2
    per feature space -> sparse product with the coefficients of the columns seen in training
    -> softmax. Built from a fitted pipeline (`classifiers.fitting.hashed_scorer`, checked
    against predict_proba) or from a model file's arrays (`load_model`); `arrays()` is what a
    model file stores."""

    def __init__(self, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
        self._arrays = arrays
        self.classes = [str(c) for c in arrays["classes"]]
        self._intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        k = self._intercept.shape[0]
        # Per feature space: text -> columns, the space's size, IDF, column -> coef row, coef.
        self._single: list[tuple[Any, int, np.ndarray[Any, Any], np.ndarray[Any, Any],
                                 np.ndarray[Any, Any]]] = []
        for part in HASHED_PARTS:
            size, columns_of = space(part)
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
            self._single.append((columns_of, size, idf, row_of, coef))

    def arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        return self._arrays

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
        return np.asarray(softmax(decision[np.newaxis, :])[0])

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
        return softmax(decision)


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



def softmax(decision: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Probabilities from a logistic regression's decision values, as scikit-learn computes
    them (binary: its coef_ has one row, for classes_[1])."""
    if decision.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-decision[:, 0]))
        return np.column_stack([1.0 - p1, p1])
    decision = decision - decision.max(axis=1, keepdims=True)
    exp = np.exp(decision)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))
