from __future__ import annotations

from classifiers.settings import ClassifierSettings, parse_classifier_table
from classifiers.types import DEFAULT_LEVELS

SIX = ["critical", "urgent", "high", "normal", "low", "info"]


def test_empty_table_gives_defaults_for_the_default_scale() -> None:
    settings, problems = parse_classifier_table({}, DEFAULT_LEVELS, "severity.toml")
    assert problems == [] and settings == ClassifierSettings()
    assert settings.level_for(100) == "urgent" and settings.level_for(-100) == "low"


def test_six_level_scale_needs_thresholds_and_a_model_level_map() -> None:
    settings, problems = parse_classifier_table({}, SIX, "severity.toml")
    assert settings is None
    assert {p.key for p in problems} == {"classifier.thresholds", "classifier.model_level_map"}


def test_six_level_scale_maps_onto_the_model_levels() -> None:
    table = {
        "thresholds": {"critical": 11, "urgent": 8, "high": 5, "normal": 2, "low": 0},
        "model_level_map": {
            "critical": "urgent",
            "urgent": "urgent",
            "high": "high",
            "normal": "normal",
            "low": "low",
            "info": "low",
        },
    }
    settings, problems = parse_classifier_table(table, SIX, "severity.toml")
    assert settings is not None, problems
    assert settings.level_for(12) == "critical" and settings.level_for(-1) == "info"
    assert settings.map_to_model_level("info") == "low"


def test_unknown_keys_wrong_types_and_unordered_thresholds_are_named() -> None:
    _, problems = parse_classifier_table({"treshold": 1, "shadow": "yes"}, DEFAULT_LEVELS, "s.toml")
    assert {p.key for p in problems} == {"classifier.treshold", "classifier.shadow"}
    _, problems = parse_classifier_table(
        {"thresholds": {"urgent": 3, "high": 5, "normal": 1}}, DEFAULT_LEVELS, "s.toml"
    )
    assert [p.key for p in problems] == ["classifier.thresholds.high"]


def test_model_weight_is_bounded() -> None:
    _, problems = parse_classifier_table({"model_weight": 50}, DEFAULT_LEVELS, "s.toml")
    assert [p.key for p in problems] == ["classifier.model_weight"]


def test_the_jump_probabilities_are_probabilities() -> None:
    _, problems = parse_classifier_table(
        {"jump_min_model_probability": 1.5, "jump_min_model_probability_any_problem": -0.1},
        DEFAULT_LEVELS, "s.toml",
    )
    assert [p.key for p in problems] == [
        "classifier.jump_min_model_probability",
        "classifier.jump_min_model_probability_any_problem",
    ]
    settings, problems = parse_classifier_table(
        {"jump_min_model_probability_any_problem": 0.9}, DEFAULT_LEVELS, "s.toml"
    )
    assert problems == [] and settings is not None
    assert settings.jump_min_model_probability_any_problem == 0.9
