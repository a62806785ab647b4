"""Training: the shipped corpus, agents' corrections, and the install gate.

Owns: reading labelled files (JSONL or CSV), the deterministic held-out split, fitting, the
"install only if not worse on the held-out split (macro-F1) unless forced" gate, and readable
per-level reports (`score_predictions`). Writes only into `model_dir` through classifiers.model.
Never touches the gateway's database: the gateway passes corrections in as LabelledExample
values. Never imports the engine (`classifiers.evaluation` runs the whole engine).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from classifiers.model import (
    LoadedModel,
    ModelFileError,
    has_model,
    is_outdated_default,
    load_model,
    model_dir_lock,
    save_model,
)
from classifiers.reading import read
from classifiers.settings import ClassifierSettings
from classifiers.types import CHANNELS, DEFAULT_LEVELS, LabelledExample

DATA_DIR = Path(__file__).parent / "data"
SHIPPED_TRAIN = DATA_DIR / "train.jsonl"
SHIPPED_EVAL = DATA_DIR / "eval.jsonl"
# Independent writers' messages (issue 16): each row has industry, channel and source.
SHIPPED_CORPUS = DATA_DIR / "corpus"
HELD_OUT_ONE_IN = 6
# A candidate within this much macro-F1 of the current model counts as "not worse": adding one
# correction to 2,000 examples moves the held-out macro-F1 by a few thousandths either way.
INSTALL_TOLERANCE = 0.01
DEFAULT_SEED = 0


class TrainingDataError(ValueError):
    pass


@dataclass(frozen=True)
class EvalReport:
    levels: tuple[str, ...]
    n: int
    accuracy: float
    macro_f1: float
    # level -> (precision, recall, f1, support)
    per_level: tuple[tuple[str, float, float, float, int], ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true level, columns: predicted

    def metric(self, level: str) -> tuple[float, float, float, int]:
        for name, p, r, f, s in self.per_level:
            if name == level:
                return p, r, f, s
        raise KeyError(level)

    def format(self) -> str:
        width = max(len(lvl) for lvl in self.levels) + 2
        lines = [f"{'level':<{width}}precision  recall  f1     support"]
        for name, p, r, f, s in self.per_level:
            lines.append(f"{name:<{width}}{p:9.3f}  {r:6.3f}  {f:5.3f}  {s:7d}")
        lines.append(f"accuracy {self.accuracy:.3f}  macro-F1 {self.macro_f1:.3f}  n={self.n}")
        lines.append("confusion (rows = true, columns = predicted):")
        lines.append(" " * width + "".join(f"{lvl[:8]:>9}" for lvl in self.levels))
        for name, row in zip(self.levels, self.confusion, strict=True):
            lines.append(f"{name:<{width}}" + "".join(f"{v:9d}" for v in row))
        return "\n".join(lines)


@dataclass(frozen=True)
class TrainReport:
    installed: bool
    reason: str
    version: str | None
    new: EvalReport
    current: EvalReport | None
    n_train: int
    n_held_out: int
    seconds: float


def score_predictions(truth: Sequence[str], predicted: Sequence[str],
                      levels: Sequence[str]) -> EvalReport:
    # Imported here: the engine imports this module for ensure_model, and a worker that
    # scores an existing model never needs scikit-learn (classifiers.fitting).
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(levels)
    p, r, f, s = precision_recall_fscore_support(truth, predicted, labels=labels,
                                                 zero_division=0)
    cm = confusion_matrix(truth, predicted, labels=labels)
    correct = sum(1 for t, y in zip(truth, predicted, strict=True) if t == y)
    macro = float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))
    return EvalReport(
        tuple(labels), len(truth), correct / len(truth) if truth else 0.0, macro,
        tuple((lvl, float(p[i]), float(r[i]), float(f[i]), int(s[i]))
              for i, lvl in enumerate(labels)),
        tuple(tuple(int(v) for v in row) for row in cm),
    )


def _example(row: Mapping[str, Any], where: str) -> LabelledExample:
    def text(*keys: str) -> str:
        for key in keys:
            value = row.get(key)
            if value is not None:
                return str(value)
        return ""

    level = text("level", "severity").strip().lower()
    if not level:
        raise TrainingDataError(f"{where}: no level")
    channel = text("channel").strip().lower() or "email"
    if channel not in CHANNELS:
        raise TrainingDataError(f"{where}: unknown channel {channel!r}")
    headers = row.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise TrainingDataError(f"{where}: headers must be an object")
    return LabelledExample(
        subject=text("subject", "title", "summary"),
        body=text("body", "text", "description"),
        level=level,
        channel=channel,
        headers=tuple((str(k).lower(), str(v)) for k, v in headers.items()),
        industry=text("industry").strip().lower(),
        source=text("source").strip(),
    )


def load_examples(path: Path) -> list[LabelledExample]:
    """JSONL (one object a line) or CSV with a header row: subject/title, body/text, level,
    optional channel."""
    out: list[LabelledExample] = []
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            for i, row in enumerate(csv.DictReader(fh), start=2):
                out.append(_example(row, f"{path}:{i}"))
        else:
            for i, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError as exc:
                        raise TrainingDataError(f"{path}:{i}: {exc}") from exc
                    if not isinstance(row, dict):
                        raise TrainingDataError(f"{path}:{i}: not an object")
                    out.append(_example(row, f"{path}:{i}"))
    return out


def shipped_examples() -> list[LabelledExample]:
    """Everything the project ships to train on: train.jsonl plus corpus/*.jsonl."""
    out = load_examples(SHIPPED_TRAIN)
    for path in sorted(SHIPPED_CORPUS.glob("*.jsonl")):
        out.extend(load_examples(path))
    return out


def model_texts(examples: Iterable[LabelledExample], body_chars: int = 2048) -> list[str]:
    """What the model reads for each example: normalised text, dimension tokens first."""
    return [read(e.as_input(), body_chars).model_text for e in examples]


def is_held_out(example: LabelledExample) -> bool:
    """Stable split by content: an example (and every copy of it) is always on the same side,
    so every model, old or new, is judged on messages it never saw."""
    key = f"{example.subject}\x00{example.body}\x00{example.channel}".encode()
    return hashlib.sha256(key).digest()[0] % HELD_OUT_ONE_IN == 0


def _fit(examples: Sequence[LabelledExample], body_chars: int, seed: int) -> Any:
    from classifiers.fitting import new_pipeline  # scikit-learn: only when a model is fitted

    pipeline = new_pipeline(seed)
    pipeline.fit(model_texts(examples, body_chars), [e.level for e in examples])
    return pipeline


def map_levels(examples: Iterable[LabelledExample],
                settings: ClassifierSettings) -> list[LabelledExample]:
    mapping = dict(settings.model_level_map)
    out = []
    for e in examples:
        level = mapping.get(e.level, e.level)
        if level not in DEFAULT_LEVELS:
            raise TrainingDataError(f"level {e.level!r} is not on the configured scale")
        out.append(LabelledExample(e.subject, e.body, level, e.channel, e.headers,
                                   e.industry, e.source))
    return out


def build_default_model(model_dir: Path, settings: ClassifierSettings | None = None,
                        seed: int = DEFAULT_SEED) -> LoadedModel:
    """The out-of-the-box model: the shipped corpus (train.jsonl + corpus/*.jsonl) minus its
    held-out part, deterministic."""
    settings = settings or ClassifierSettings()
    examples = [e for e in shipped_examples() if not is_held_out(e)]
    pipeline = _fit(examples, settings.body_chars_for_model, seed)
    return save_model(model_dir, pipeline, DEFAULT_LEVELS, len(examples),
                      {"source": "shipped corpus"})


def ensure_model(model_dir: Path, settings: ClassifierSettings | None = None) -> LoadedModel:
    """Load the current model, creating the default one first if `model_dir` has none, or
    replacing it if it is a default model of an older format (see model.FORMAT)."""
    with model_dir_lock(model_dir):
        if not has_model(model_dir) or is_outdated_default(model_dir):
            return build_default_model(model_dir, settings)
    return load_model(model_dir)


def _say(out: TextIO, message: str) -> None:
    print(f"[train] {message}", file=out, flush=True)


def train(
    model_dir: Path,
    extra: Iterable[LabelledExample],
    *,
    settings: ClassifierSettings | None = None,
    force: bool = False,
    out: TextIO = sys.stdout,
    seed: int = DEFAULT_SEED,
    include_shipped: bool = True,
) -> TrainReport:
    """Retrain from the shipped corpus plus `extra` (e.g. agents' severity corrections, in the
    configured scale) and install the result only if its macro-F1 on the held-out split is not
    below the current model's, unless `force`."""
    started = time.monotonic()
    settings = settings or ClassifierSettings()
    _say(out, "loading examples")
    examples = (shipped_examples() if include_shipped else []) + map_levels(
        extra, settings)
    train_part = [e for e in examples if not is_held_out(e)]
    held_out = [e for e in examples if is_held_out(e)]
    _say(out, f"{len(examples)} examples: {len(train_part)} to train, {len(held_out)} held out")
    if len({e.level for e in train_part}) < 2 or not held_out:
        raise TrainingDataError("need at least two levels to train and a non-empty held-out "
                                "split")
    _say(out, "fitting TF-IDF word + char n-grams -> logistic regression")
    pipeline = _fit(train_part, settings.body_chars_for_model, seed)
    _say(out, f"fitted in {time.monotonic() - started:.1f}s; scoring the held-out split")
    texts = model_texts(held_out, settings.body_chars_for_model)
    truth = [e.level for e in held_out]
    candidate = LoadedModel("candidate", DEFAULT_LEVELS, len(train_part), pipeline, "")
    new_report = score_predictions(truth, candidate.predict(texts), DEFAULT_LEVELS)
    _say(out, "new model on the held-out split:\n" + new_report.format())
    current_report: EvalReport | None = None
    with model_dir_lock(model_dir):
        if has_model(model_dir):
            try:
                current = load_model(model_dir)
            except ModelFileError as exc:
                _say(out, f"current model unusable ({exc}); treating as absent")
            else:
                current_report = score_predictions(truth, current.predict(texts), DEFAULT_LEVELS)
                _say(out, f"current model {current.version} on the same split:\n"
                     + current_report.format())
        if (current_report is not None
                and new_report.macro_f1 < current_report.macro_f1 - INSTALL_TOLERANCE):
            if not force:
                reason = (f"not installed: macro-F1 {new_report.macro_f1:.3f} < current "
                          f"{current_report.macro_f1:.3f} (use force to install anyway)")
                _say(out, reason)
                return TrainReport(False, reason, None, new_report, current_report,
                                   len(train_part), len(held_out),
                                   time.monotonic() - started)
            reason = "installed by force although worse on the held-out split"
        else:
            reason = "installed: not worse than the current model on the held-out split"
        saved = save_model(model_dir, pipeline, DEFAULT_LEVELS, len(train_part),
                           {"source": "train()", "held_out_macro_f1": new_report.macro_f1})
    _say(out, f"{reason}; version {saved.version}")
    return TrainReport(True, reason, saved.version, new_report, current_report, len(train_part),
                       len(held_out), time.monotonic() - started)


def examples_to_jsonl(examples: Iterable[LabelledExample]) -> str:
    buf = io.StringIO()
    for e in examples:
        buf.write(json.dumps({"subject": e.subject, "body": e.body, "channel": e.channel,
                              "level": e.level, "headers": dict(e.headers)}) + "\n")
    return buf.getvalue()
