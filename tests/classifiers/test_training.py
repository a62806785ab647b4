from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from classifiers.engine import build_engine
from classifiers.evaluation import evaluate
from classifiers.model import FORMAT, ModelFileError, load_model, text_of
from classifiers.settings import ClassifierSettings
from classifiers.training import (
    SHIPPED_EVAL,
    SHIPPED_TRAIN,
    is_held_out,
    load_examples,
    train,
)
from classifiers.types import LabelledExample, TextInput
from tests.classifiers.conftest import SHIPPED_RULES


def test_first_start_builds_a_versioned_model_with_a_verified_manifest(tmp_path: Path) -> None:
    engine, problems = build_engine(SHIPPED_RULES, ClassifierSettings(), tmp_path / "m")
    assert engine is not None, problems
    manifest = json.loads((tmp_path / "m" / "current.json").read_text())
    assert manifest["version"] == engine.model_version
    assert (tmp_path / "m" / manifest["file"]).is_file()
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_default_model_is_deterministic(tmp_path: Path, default_model_dir: Path) -> None:
    build_engine(SHIPPED_RULES, ClassifierSettings(), tmp_path / "again")
    a, b = load_model(default_model_dir), load_model(tmp_path / "again")
    texts = [e.subject + " " + e.body for e in load_examples(SHIPPED_TRAIN)[:50]]
    assert (a.probabilities(texts) == b.probabilities(texts)).all()


def test_a_tampered_model_file_is_refused_before_unpickling(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "current.json").read_text())
    with (model_dir / manifest["file"]).open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(model_dir)
    engine, problems = build_engine(SHIPPED_RULES, ClassifierSettings(), model_dir)
    assert engine is None and "sha256" in problems[0].message


def test_train_prints_progress_metrics_and_confusion_and_installs_when_not_worse(
    model_dir: Path,
) -> None:
    before = load_model(model_dir).version
    out = io.StringIO()
    extra = [
        LabelledExample(
            "Kiosk", "All kiosks at every site are offline, none can check in", "urgent", "email"
        )
    ]
    report = train(model_dir, extra, out=out)
    text = out.getvalue()
    assert "[train] fitting" in text and "precision" in text and "confusion" in text
    assert report.installed and report.version != before
    assert load_model(model_dir).version == report.version


def test_train_refuses_a_worse_model_unless_forced(model_dir: Path) -> None:
    # Wrong labels on messages that all land in the training part: the held-out split keeps
    # the shipped, correct labels, so the poisoned model must score worse there.
    flipped = {"urgent": "low", "low": "urgent", "high": "normal", "normal": "high"}
    poison = []
    for e in load_examples(SHIPPED_TRAIN):
        for suffix in (" ref 1", " ref 2", " ref 3", " ref 4", " ref 5", " ref 6"):
            bad = LabelledExample(e.subject, e.body + suffix, flipped[e.level], e.channel)
            if not is_held_out(bad):
                poison.append(bad)
                break
    before = load_model(model_dir).version
    report = train(model_dir, poison, out=io.StringIO())
    assert not report.installed and load_model(model_dir).version == before
    assert report.current is not None and report.new.macro_f1 < report.current.macro_f1
    forced = train(model_dir, poison, out=io.StringIO(), force=True)
    assert forced.installed and load_model(model_dir).version == forced.version


def test_train_maps_a_configured_scale_onto_the_model_levels(model_dir: Path) -> None:
    from classifiers.settings import parse_classifier_table

    six = ["critical", "urgent", "high", "normal", "low", "info"]
    settings, _ = parse_classifier_table(
        {
            "thresholds": {"critical": 11, "urgent": 8, "high": 5, "normal": 2, "low": 0},
            "model_level_map": {
                "critical": "urgent",
                "urgent": "urgent",
                "high": "high",
                "normal": "normal",
                "low": "low",
                "info": "low",
            },
        },
        six,
        "severity.toml",
    )
    assert settings is not None
    report = train(
        model_dir,
        [LabelledExample("FYI", "newsletter archive", "info")],
        settings=settings,
        out=io.StringIO(),
        force=True,
    )
    assert report.installed


def test_evaluate_reads_csv_and_jsonl(model_dir: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "labelled.csv"
    csv_path.write_text(
        "subject,body,level,channel\n"
        "Down,The portal is down for everyone,urgent,email\n"
        "Price,How much is the premium plan?,low,sms\n"
    )
    report = evaluate(model_dir, csv_path, io.StringIO())
    assert report.n == 2
    jsonl = tmp_path / "labelled.jsonl"
    jsonl.write_text(json.dumps({"subject": "Down", "body": "all down", "level": "urgent"}) + "\n")
    assert evaluate(model_dir, jsonl, io.StringIO(), rules_dir=SHIPPED_RULES).n == 1


def _format_1_model(model_dir: Path, source: str) -> str:
    """A model directory as the code before format 2 wrote it: char_wb 3-5 of the whole text,
    `"format": 1` in current.json."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    from classifiers.model import model_dir_lock, save_model, text_of
    from classifiers.types import DEFAULT_LEVELS

    examples = load_examples(SHIPPED_TRAIN)
    old = Pipeline(
        [
            (
                "features",
                FeatureUnion(
                    [
                        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                        (
                            "char",
                            TfidfVectorizer(
                                analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2
                            ),
                        ),
                    ]
                ),
            ),
            ("clf", LogisticRegression(C=8.0, max_iter=2000, class_weight="balanced")),
        ]
    ).fit([text_of(e.as_input()) for e in examples], [e.level for e in examples])
    with model_dir_lock(model_dir):
        saved = save_model(model_dir, old, DEFAULT_LEVELS, len(examples), {"source": source})
    manifest = json.loads((model_dir / "current.json").read_text())
    manifest["format"] = 1
    (model_dir / "current.json").write_text(json.dumps(manifest))
    return saved.version


def test_an_old_format_1_default_model_is_rebuilt_at_start_not_fatal(tmp_path: Path) -> None:
    old = _format_1_model(tmp_path / "m", "shipped train.jsonl")
    engine, problems = build_engine(SHIPPED_RULES, ClassifierSettings(), tmp_path / "m")
    assert engine is not None, problems
    assert engine.model_version != old
    assert json.loads((tmp_path / "m" / "current.json").read_text())["format"] == FORMAT


def test_an_old_format_1_model_trained_on_corrections_still_loads_and_scores(
    tmp_path: Path,
) -> None:
    old = _format_1_model(tmp_path / "m", "train()")
    engine, problems = build_engine(SHIPPED_RULES, ClassifierSettings(), tmp_path / "m")
    assert engine is not None, problems
    assert engine.model_version == old
    verdict = engine.classify(TextInput("Down", "The portal is down for everyone."))
    assert verdict.model_vote is not None and verdict.severity == "urgent"


def test_a_saved_model_file_scores_as_the_fitted_pipeline_did(tmp_path: Path) -> None:
    # Format 5 stores arrays, not the pipeline: the loaded scorer must give the fitted
    # pipeline's own probabilities.
    from classifiers.fitting import new_pipeline
    from classifiers.model import model_dir_lock, save_model
    from classifiers.types import DEFAULT_LEVELS

    examples = load_examples(SHIPPED_TRAIN)
    pipeline = new_pipeline(0).fit([text_of(e.as_input()) for e in examples],
                                   [e.level for e in examples])
    with model_dir_lock(tmp_path):
        save_model(tmp_path, pipeline, DEFAULT_LEVELS, len(examples), {"source": "test"})
    assert next(tmp_path.glob("model-*.npz"))
    model = load_model(tmp_path)
    assert model.scorer is not None and model.pipeline is None
    texts = [text_of(e.as_input()) for e in load_examples(SHIPPED_EVAL)[:40]] + ["", "!!"]
    expected = pipeline.predict_proba(texts)
    got = np.array([model.scorer.proba(t) for t in texts])
    assert np.allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert np.allclose(model.scorer.proba_many(texts), expected, rtol=1e-6, atol=1e-9)
