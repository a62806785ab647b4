"""The text model: TF-IDF word and character n-grams into a logistic regression over the shipped
model's four levels, plus its versioned, verified storage.

Owns: what the model reads (subject + the first few KB of body, never headers), how it is fitted
(deterministically, fixed random_state), and how model files are written (tmp + fsync + rename)
and read (sha256 from the manifest checked *before* unpickling). Pickle/joblib is used only for
files this code wrote itself into the gateway's state directory; skops is not installed. Never
imports the gateway or the channels.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from classifiers.types import DEFAULT_LEVELS, TextInput

MANIFEST = "current.json"
FORMAT = 1
# Words a sender uses to *claim* urgency. Rules score them as sender_urgency; the model never
# sees them, so it can only learn urgency from what the message describes.
_CLAIMS = re.compile(r"\b(?:urgent(?:ly)?|asap|important|high priority)\b|!{2,}", re.IGNORECASE)


class ModelFileError(Exception):
    """A model file is missing, altered or unreadable; the caller keeps the model it has."""


def model_text(subject: str, body: str, channel: str, body_chars: int = 2048) -> str:
    text = f"{subject}\n{body[:body_chars]}"
    return f"__{channel}__ " + _CLAIMS.sub(" ", text)


def text_of(inp: TextInput, body_chars: int = 2048) -> str:
    return model_text(inp.subject, inp.body, inp.channel, body_chars)


def new_pipeline(seed: int = 0) -> Pipeline:
    """Word 1-2 grams + char_wb 3-5 grams, sublinear TF, balanced class weights."""
    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                                     max_features=200_000, lowercase=True,
                                     token_pattern=r"(?u)\b\w[\w']*\b")),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True,
                                     min_df=2, max_features=300_000, lowercase=True)),
        ]
    )
    clf = LogisticRegression(C=8.0, max_iter=2000, class_weight="balanced",
                             random_state=seed)
    return Pipeline([("features", features), ("clf", clf)])


@dataclass(frozen=True)
class LoadedModel:
    version: str
    levels: tuple[str, ...]
    trained_examples: int
    pipeline: Any  # a fitted sklearn Pipeline (sklearn ships no type information)
    sha256: str

    def probabilities(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """Rows of probabilities in `self.levels` order."""
        proba = self.pipeline.predict_proba(list(texts))
        classes = list(self.pipeline.classes_)
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


def load_model(model_dir: Path) -> LoadedModel:
    """Load the current model, refusing any file whose sha256 differs from the manifest."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{model_dir / MANIFEST}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(f"{model_dir / MANIFEST}: not a format-{FORMAT} manifest")
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
