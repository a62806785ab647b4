"""Honest evaluation of the whole engine (normalisation, rules, matrix, model, thresholds).

Three measurements, each per level and per channel:
- the dev set (`../shared/data/triage/dev.jsonl`, written by other hands): evaluation only,
  never trained or tuned on; only aggregate figures are printed, never a message;
- leave-one-domain-out over the shipped corpus: industries are grouped into `LODO_FOLDS`
  folds (largest first, dealt round-robin, so each fold holds whole industries), a model is
  trained on every other fold and the fold is classified; figures pool all folds;
- the shipped eval.jsonl, as it is.
`python -m classifiers.evaluation` prints all three, then a fourth that is closer to what the
hidden sets measure (messages by other hands): leave-one-writer-out, where each writer's
examples are classified by a model trained on every other writer (writers' voices cross
industries, so leave-one-domain-out flatters a templated writer). Never imports the gateway
or channels; writes only temporary model directories.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from classifiers.engine import Engine, build_engine
from classifiers.fitting import new_pipeline
from classifiers.model import LoadedModel
from classifiers.rules import load_rules
from classifiers.settings import ClassifierSettings
from classifiers.training import (
    SHIPPED_EVAL,
    EvalReport,
    TrainingDataError,
    ensure_model,
    load_examples,
    map_levels,
    model_texts,
    score_predictions,
    shipped_examples,
)
from classifiers.types import CHANNELS, DEFAULT_LEVELS, LabelledExample

ROOT = Path(__file__).resolve().parents[1]
DEV_SET = (ROOT / "../shared/data/triage/dev.jsonl").resolve()
RULES_DIR = ROOT / "config" / "rules.d"
LODO_FOLDS = 8


@dataclass(frozen=True)
class Figures:
    """Scores of one set of predictions."""

    n: int
    exact: float
    urgent_recall: float
    urgent_precision: float
    confusion: tuple[tuple[int, ...], ...]  # rows true, columns predicted, DEFAULT_LEVELS order
    # Queue jumps: (urgent messages that jumped, urgent messages, others that jumped, others).
    # The level decides the order among tickets that do not jump; a jump is what puts an
    # outage ahead of the queue, so it is reported beside the level, never folded into it.
    # None when the predictions said nothing of jumps.
    jumps: tuple[int, int, int, int] | None = None

    def line(self) -> str:
        text = (f"n={self.n:4d}  exact {self.exact:.3f}  urgent recall {self.urgent_recall:.3f}"
                f"  urgent precision {self.urgent_precision:.3f}")
        if self.jumps is None:
            return text
        urgent_jumped, urgent, others_jumped, others = self.jumps
        share = urgent_jumped / urgent if urgent else 0.0
        return (f"{text}  jumped the queue: urgent {urgent_jumped}/{urgent} ({share:.2f}), "
                f"others {others_jumped}/{others}")

    def matrix(self) -> str:
        head = "true\\pred " + "".join(f"{lvl:>8}" for lvl in DEFAULT_LEVELS)
        rows = [f"{lvl:<10}" + "".join(f"{v:8d}" for v in row)
                for lvl, row in zip(DEFAULT_LEVELS, self.confusion, strict=True)]
        return "\n".join([head, *rows])


def figures(truth: Sequence[str], predicted: Sequence[str],
            jumped: Sequence[bool] | None = None) -> Figures:
    counts = Counter(zip(truth, predicted, strict=True))
    jumps = None
    if jumped is not None:
        urgent = [j for t, j in zip(truth, jumped, strict=True) if t == "urgent"]
        others = [j for t, j in zip(truth, jumped, strict=True) if t != "urgent"]
        jumps = (sum(urgent), len(urgent), sum(others), len(others))
    confusion = tuple(tuple(counts[(t, p)] for p in DEFAULT_LEVELS) for t in DEFAULT_LEVELS)
    n = len(truth)
    hit = counts[("urgent", "urgent")]
    said = sum(counts[(t, "urgent")] for t in DEFAULT_LEVELS)
    real = sum(counts[("urgent", p)] for p in DEFAULT_LEVELS)
    exact = sum(counts[(lvl, lvl)] for lvl in DEFAULT_LEVELS)
    return Figures(n, exact / n if n else 0.0, hit / real if real else 0.0,
                   hit / said if said else 0.0, confusion, jumps)


@dataclass(frozen=True)
class Evaluation:
    name: str
    pooled: Figures
    per_channel: tuple[tuple[str, Figures], ...]

    def report(self) -> str:
        lines = [f"== {self.name}", f"pooled      {self.pooled.line()}", self.pooled.matrix()]
        for channel, fig in self.per_channel:
            lines.append(f"{channel:<11} {fig.line()}")
            lines.append(fig.matrix())
        return "\n".join(lines)


Prediction = tuple[str, bool]  # (level, jumped the queue)


def score(name: str, examples: Sequence[LabelledExample],
          predicted: Sequence[Prediction]) -> Evaluation:
    truth = [e.level for e in examples]

    def on(channel: str | None) -> Figures:
        chosen = [i for i, e in enumerate(examples) if channel in (None, e.channel)]
        return figures([truth[i] for i in chosen], [predicted[i][0] for i in chosen],
                       [predicted[i][1] for i in chosen])

    channels = tuple((ch, on(ch)) for ch in CHANNELS if any(e.channel == ch for e in examples))
    return Evaluation(name, on(None), channels)


def predict(engine: Engine, examples: Sequence[LabelledExample]) -> list[Prediction]:
    return [(v.severity, v.jump_queue)
            for v in engine.classify_many([e.as_input() for e in examples])]


def load_dev(path: Path = DEV_SET) -> list[LabelledExample]:
    """The dev set's level is in `severity`; its other fields are not read."""
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                out.append(LabelledExample(str(row.get("subject") or ""),
                                           str(row.get("body") or ""),
                                           str(row["severity"]).lower(),
                                           str(row.get("channel") or "email")))
    return out


def evaluate_dev(engine: Engine, path: Path = DEV_SET) -> Evaluation:
    examples = load_dev(path)
    return score("dev set (evaluation only)", examples, predict(engine, examples))


def evaluate_eval(engine: Engine, path: Path = SHIPPED_EVAL) -> Evaluation:
    from classifiers.training import load_examples

    examples = load_examples(path)
    return score("shipped eval.jsonl", examples, predict(engine, examples))


def lodo_folds(examples: Sequence[LabelledExample], folds: int = LODO_FOLDS) -> list[int]:
    """Fold number of each example: whole industries, largest first, dealt round-robin."""
    sizes = Counter(e.industry or "unknown" for e in examples)
    fold_of = {ind: i % folds for i, (ind, _) in
               enumerate(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])))}
    return [fold_of[e.industry or "unknown"] for e in examples]


def lowo_folds(examples: Sequence[LabelledExample],
               train_only: frozenset[str] = frozenset()) -> list[int]:
    """Fold number of each example for leave-one-writer-out: one fold per writer (`source`),
    -1 for the writers in `train_only` (always trained on, never tested)."""
    writers = sorted({e.source or "unknown" for e in examples} - train_only)
    fold_of = {w: i for i, w in enumerate(writers)}
    return [fold_of.get(e.source or "unknown", -1) for e in examples]


def _cross_predict(examples: Sequence[LabelledExample], fold_of: Sequence[int],
                   settings: ClassifierSettings, rules_dir: Path) -> list[Prediction]:
    """Each example of fold f (f >= 0) classified by a model trained on every other fold."""
    rules, problems = load_rules(rules_dir)
    if rules is None:
        raise ValueError("; ".join(str(p) for p in problems))
    predicted: list[Prediction] = [("", False)] * len(examples)
    texts = model_texts(examples, settings.body_chars_for_model)
    for fold in sorted(set(fold_of) - {-1}):
        train = [i for i, f in enumerate(fold_of) if f != fold]
        test = [i for i, f in enumerate(fold_of) if f == fold]
        pipeline = new_pipeline(0).fit([texts[i] for i in train],
                                       [examples[i].level for i in train])
        model = LoadedModel(f"fold-{fold}", DEFAULT_LEVELS, len(train), pipeline, "")
        engine = Engine(rules, settings, model)
        for i, prediction in zip(test, predict(engine, [examples[i] for i in test]), strict=True):
            predicted[i] = prediction
    return predicted


def evaluate_lodo(settings: ClassifierSettings | None = None, folds: int = LODO_FOLDS,
                  examples: Sequence[LabelledExample] | None = None,
                  rules_dir: Path = RULES_DIR) -> Evaluation:
    settings = settings or ClassifierSettings()
    examples = list(examples if examples is not None else shipped_examples())
    predicted = _cross_predict(examples, lodo_folds(examples, folds), settings, rules_dir)
    return score(f"leave-one-domain-out ({folds} folds of whole industries)", examples,
                 predicted)


# Writers trained on but never a test fold (a templated writer whose messages near-copy one
# another would score itself); none among the shipped writers.
LOWO_TRAIN_ONLY: frozenset[str] = frozenset()


def evaluate_lowo(settings: ClassifierSettings | None = None,
                  examples: Sequence[LabelledExample] | None = None,
                  rules_dir: Path = RULES_DIR,
                  train_only: frozenset[str] = LOWO_TRAIN_ONLY) -> Evaluation:
    """Leave-one-writer-out: every writer but those in `train_only` is a fold."""
    settings = settings or ClassifierSettings()
    examples = list(examples if examples is not None else shipped_examples())
    fold_of = lowo_folds(examples, train_only)
    predicted = _cross_predict(examples, fold_of, settings, rules_dir)
    tested = [i for i, f in enumerate(fold_of) if f >= 0]
    writers = len(set(fold_of) - {-1})
    return score(f"leave-one-writer-out ({writers} writers; trained on, never tested: "
                 f"{', '.join(sorted(train_only)) or 'none'})",
                 [examples[i] for i in tested], [predicted[i] for i in tested])



def evaluate(
    model_dir: Path,
    data: Path,
    out: TextIO = sys.stdout,
    *,
    rules_dir: Path | None = None,
    settings: ClassifierSettings | None = None,
) -> EvalReport:
    """Score a labelled CSV/JSONL file (`gateway evaluate FILE`). With `rules_dir`, the whole
    engine (normalisation, rules, matrix, model, thresholds) on the configured scale; without,
    the model alone on its four levels."""
    settings = settings or ClassifierSettings()
    examples = load_examples(data)
    if rules_dir is not None:
        engine, problems = build_engine(rules_dir, settings, model_dir)
        if engine is None:
            raise TrainingDataError("; ".join(str(p) for p in problems))
        predicted = [v.severity for v in engine.classify_many([e.as_input() for e in examples])]
        report = score_predictions([e.level for e in examples], predicted, settings.levels)
    else:
        model = ensure_model(model_dir, settings)
        mapped = map_levels(examples, settings)
        texts = model_texts(mapped, settings.body_chars_for_model)
        report = score_predictions([e.level for e in mapped], model.predict(texts),
                                   DEFAULT_LEVELS)
    print(report.format(), file=out, flush=True)
    return report

def honest(
    out: TextIO = sys.stdout,
    *,
    rules_dir: Path = RULES_DIR,
    settings: ClassifierSettings | None = None,
    model_dir: Path | None = None,
    folds: int = LODO_FOLDS,
) -> None:
    """The three honest evaluations, each pooled, per level and per channel: the dev set,
    leave-one-domain-out, the shipped eval.jsonl. `python -m classifiers.evaluation` prints
    them for the shipped rules and a freshly trained default model; `gateway evaluate --honest`
    for a config's rules, classifier table and installed model (`model_dir`). Raises ValueError
    when the engine cannot be built or the scale is not the default four levels (the figures
    count urgent recall and precision on that scale)."""
    settings = settings or ClassifierSettings()
    if tuple(settings.levels) != tuple(DEFAULT_LEVELS):
        raise ValueError(
            f"honest evaluation scores the default scale ({', '.join(DEFAULT_LEVELS)}); "
            f"this scale is {', '.join(settings.levels)}: use evaluate --data with a file "
            "labelled on it"
        )
    with tempfile.TemporaryDirectory() as tmp:
        engine, problems = build_engine(rules_dir, settings, model_dir or Path(tmp))
        if engine is None:
            raise ValueError("; ".join(str(p) for p in problems))
        if DEV_SET.is_file():
            print(evaluate_dev(engine).report(), file=out, flush=True)
        else:
            print(f"== dev set not found at {DEV_SET}", file=out)
        print(evaluate_lodo(settings, folds, rules_dir=rules_dir).report(), file=out, flush=True)
        print(evaluate_eval(engine).report(), file=out, flush=True)


def main(out: TextIO = sys.stdout) -> None:
    try:
        honest(out)
        print(evaluate_lowo().report(), file=out, flush=True)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
