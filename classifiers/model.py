"""The text model: what it reads, and how a model file is stored and loaded.

Owns: what the model reads (subject + the first few KB of body, never headers), `LoadedModel`
(a loaded model's probabilities, through its scorer), and how model files are written (tmp +
fsync + rename) and read (sha256 from the manifest checked *before* anything is loaded; format
5 is numpy arrays loaded without pickle into a `classifiers.scoring.HashedScorer`, formats 1-4
a joblib pickle this code wrote itself into the gateway's state directory). Fitting lives in
`classifiers.fitting`, the only classifier module that imports scikit-learn and scipy: this
module imports it only to write a model or to load an old-format one, so a worker scoring a
format-5 model never pays for that import. Never imports the gateway or the channels.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Model files of formats 1-4 pickle their char preprocessor as classifiers.model.lowered_head.
from classifiers.features import lowered_head as lowered_head
from classifiers.scoring import HashedScorer, Scorer
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
WORD_FEATURES = 50_000  # formats 1-4 (fitted vocabulary)
CHAR_FEATURES = 100_000
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
            from classifiers.fitting import compile_scorer  # a pipeline means scikit-learn

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
    from classifiers.fitting import compile_scorer

    version = next_version(model_dir)
    scorer = compile_scorer(pipeline)
    if isinstance(scorer, HashedScorer):
        # Format 5: numpy arrays only (uncompressed: a load is a few reads, no unpickling).
        path = model_dir / f"model-{version}.npz"
        arrays = scorer.arrays()
        _write_atomically(path, lambda fh: np.savez(
            fh, allow_pickle=False, **arrays))
    else:  # a vocabulary pipeline (formats 1-4; tests of old model directories)
        import joblib

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
    import joblib  # formats 1-4: a pickled scikit-learn pipeline

    try:
        pipeline = joblib.load(path)
    except Exception as exc:  # a verified file that still fails: wrong sklearn version etc.
        raise ModelFileError(f"{path}: cannot load: {exc}") from exc
    return LoadedModel(
        str(manifest["version"]), tuple(levels), int(manifest.get("trained_examples", 0)),
        pipeline, actual,
    )
