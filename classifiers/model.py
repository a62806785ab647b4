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
from typing import Any

import joblib
import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

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
FORMAT = 4
READABLE_FORMATS = (1, 2, 3, 4)
DEFAULT_SOURCES = ("shipped train.jsonl", "shipped corpus")
# From this many texts on, probabilities come from one vectorisation of the whole batch.
BATCH_MIN = 16
SUBJECT_CHARS = 256
CHAR_NGRAM_CHARS = 1024
WORD_FEATURES = 50_000
CHAR_FEATURES = 100_000
MAX_ITER = 300
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
    return head + _CLAIMS.sub(" ", text)


def text_of(inp: TextInput, body_chars: int = 2048) -> str:
    return model_text(inp.subject, inp.body, inp.channel, body_chars)


def lowered_head(text: str, chars: int) -> str:
    """The char n-gram vectorizer's preprocessor: lower-cased, first `chars` characters only.
    (Module-level so fitted pipelines pickle; its `chars` is stored in each model file.)"""
    return text[:chars].lower()


def new_pipeline(seed: int = 0) -> Pipeline:
    """Word 1-2 grams + char_wb 3-5 grams of the first CHAR_NGRAM_CHARS characters, sublinear
    TF, balanced class weights, at most MAX_ITER solver iterations.

    Sized for speed (issue: p99 < 3 ms a message with the rules, training on 10,000 messages
    < 15 s): char n-grams dominate both costs and add little after the first KB, and the
    feature caps bound the solver's work without changing results on the shipped corpus."""
    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                                     max_features=WORD_FEATURES, lowercase=True,
                                     token_pattern=r"(?u)\b\w[\w']*\b")),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True,
                                     min_df=2, max_features=CHAR_FEATURES,
                                     preprocessor=functools.partial(lowered_head,
                                                                    chars=CHAR_NGRAM_CHARS))),
        ]
    )
    clf = LogisticRegression(C=8.0, max_iter=MAX_ITER, class_weight="balanced",
                             random_state=seed)
    return Pipeline([("features", features), ("clf", clf)])


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


def compile_scorer(pipeline: Any) -> CompiledScorer | None:
    """A CompiledScorer for `pipeline`, or None if its shape is not the one this code knows or
    the scorer disagrees with predict_proba (then the caller uses predict_proba)."""
    try:
        features, clf = pipeline.named_steps["features"], pipeline.named_steps["clf"]
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
    pipeline: Any  # a fitted sklearn Pipeline (sklearn ships no type information)
    sha256: str
    scorer: CompiledScorer | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scorer is None:
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
    taken = [p.name for p in model_dir.glob(f"model-{day}.*.joblib")]
    numbers = [int(m.group(1)) for n in taken if (m := re.search(r"\.(\d+)\.joblib$", n))]
    return f"{day}.{max(numbers, default=0) + 1}"


def save_model(model_dir: Path, pipeline: Any, levels: Sequence[str], trained_examples: int,
               extra: dict[str, object] | None = None) -> LoadedModel:
    """Write a new model file and then point the manifest at it (the rename is the commit).

    The caller holds model_dir_lock."""
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
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
    return LoadedModel(version, tuple(levels), trained_examples, pipeline, sha)


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
    if not isinstance(name, str) or "/" in name or not name.endswith(".joblib"):
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
    try:
        pipeline = joblib.load(path)
    except Exception as exc:  # a verified file that still fails: wrong sklearn version etc.
        raise ModelFileError(f"{path}: cannot load: {exc}") from exc
    return LoadedModel(
        str(manifest["version"]), tuple(levels), int(manifest.get("trained_examples", 0)),
        pipeline, actual,
    )
