"""Classifier fixtures: one default model built per session (a few seconds) and copied per test
that writes to its model directory."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from classifiers.engine import Engine, build_engine
from classifiers.settings import ClassifierSettings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_RULES = ROOT / "config" / "rules.d"


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("default-model")
    engine, problems = build_engine(SHIPPED_RULES, ClassifierSettings(), path)
    assert engine is not None, problems
    return path


@pytest.fixture
def model_dir(default_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the default model directory, free to retrain or tamper with."""
    path = tmp_path / "model"
    shutil.copytree(default_model_dir, path)
    return path


@pytest.fixture(scope="session")
def engine(default_model_dir: Path) -> Engine:
    built, problems = build_engine(SHIPPED_RULES, ClassifierSettings(), default_model_dir)
    assert built is not None, problems
    return built


@pytest.fixture
def rules_dir(tmp_path: Path) -> Callable[..., Path]:
    """rules_dir(**files): a rules.d with the shipped file plus the given extra files."""

    def make(*, shipped: bool = True, **files: str) -> Path:
        path = tmp_path / "rules.d"
        path.mkdir(exist_ok=True)
        if shipped:
            shutil.copy(SHIPPED_RULES / "00-shipped.toml", path / "00-shipped.toml")
        for name, text in files.items():
            (path / name.replace("_", "-")).write_text(text, encoding="utf-8")
        return path

    return make
