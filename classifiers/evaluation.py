"""Evaluation: how well the classifier scores a labelled file, the whole engine or the model alone.

Owns `evaluate` (`gateway evaluate`). Sits above both the engine and training: the engine builds
its default model through training, and evaluation runs the engine, so neither imports the
other back. Reads files and the model directory; writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from classifiers.engine import build_engine
from classifiers.model import text_of
from classifiers.settings import ClassifierSettings
from classifiers.training import (
    EvalReport,
    TrainingDataError,
    ensure_model,
    load_examples,
    map_levels,
    score_predictions,
)
from classifiers.types import DEFAULT_LEVELS


def evaluate(
    model_dir: Path,
    data: Path,
    out: TextIO = sys.stdout,
    *,
    rules_dir: Path | None = None,
    settings: ClassifierSettings | None = None,
) -> EvalReport:
    """Score a labelled CSV/JSONL file. With `rules_dir`, the whole engine (rules + model +
    thresholds) on the configured scale; without, the model alone on its four levels."""
    settings = settings or ClassifierSettings()
    examples = load_examples(data)
    if rules_dir is not None:
        engine, problems = build_engine(rules_dir, settings, model_dir)
        if engine is None:
            raise TrainingDataError("; ".join(str(p) for p in problems))
        predicted = [engine.classify(e.as_input()).severity for e in examples]
        report = score_predictions([e.level for e in examples], predicted, settings.levels)
    else:
        model = ensure_model(model_dir, settings)
        mapped = map_levels(examples, settings)
        texts = [text_of(e.as_input(), settings.body_chars_for_model) for e in mapped]
        report = score_predictions([e.level for e in mapped], model.predict(texts),
                                   DEFAULT_LEVELS)
    print(report.format(), file=out, flush=True)
    return report
