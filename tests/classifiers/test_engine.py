from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifiers.engine import Engine, build_engine, jump_corroboration
from classifiers.settings import ClassifierSettings
from classifiers.types import TextInput
from tests.classifiers.conftest import SHIPPED_RULES


def test_urgent_how_to_question_is_not_urgent_and_does_not_jump(engine: Engine) -> None:
    verdict = engine.classify(
        TextInput(
            "URGENT: how do I export to CSV?",
            "Hi, how do I export our customer list to CSV?",
            (("x-priority", "1"), ("importance", "high")),
        )
    )
    assert verdict.severity != "urgent" and not verdict.jump_queue


def test_calm_report_that_no_staff_can_open_the_application_is_urgent(engine: Engine) -> None:
    verdict = engine.classify(
        TextInput(
            "Good morning",
            "None of our staff can open the application since 7am. Thanks, Ann",
        )
    )
    assert verdict.severity == "urgent" and verdict.jump_queue


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    subject=st.sampled_from(
        [
            "",
            "Hello",
            "URGENT",
            "URGENT!!! ASAP",
            "Important: read",
            "Critical",
            "Newsletter",
            "Re: meeting",
        ]
    ),
    body=st.sampled_from(
        [
            "",
            "Please reply.",
            "See attached.",
            "Call me.",
            "URGENT URGENT",
            "Thanks",
            "Our offer ends today!",
        ]
    ),
    priority=st.sampled_from(["1", "1 (Highest)", "2 (High)", "high"]),
    importance=st.sampled_from([None, "high", "urgent"]),
)
def test_x_priority_alone_never_jumps_the_queue(
    engine: Engine, subject: str, body: str, priority: str, importance: str | None
) -> None:
    headers = [("x-priority", priority)] + ([("importance", importance)] if importance else [])
    verdict = engine.classify(TextInput(subject, body, tuple(headers)))
    assert not verdict.jump_queue, verdict.explain()


def test_upstream_spam_flag_forbids_jumping_even_an_outage(engine: Engine) -> None:
    text = "Our website is down for all customers since 9, we are losing orders."
    clean = engine.classify(TextInput("Site down", text))
    flagged = engine.classify(TextInput("Site down", text, (("x-spam-flag", "YES"),)))
    assert clean.jump_queue
    assert not flagged.jump_queue and "SPAM_FLAG_UPSTREAM" in flagged.guards


def test_bulk_mail_never_jumps(engine: Engine) -> None:
    verdict = engine.classify(
        TextInput("Outage", "The service is down for everyone.", (("precedence", "bulk"),))
    )
    assert not verdict.jump_queue


def test_explanation_lists_level_score_jump_hits_model_vote_and_version(engine: Engine) -> None:
    verdict = engine.classify(TextInput("Outage", "The portal is down for everyone."))
    text = verdict.explain()
    assert re.fullmatch(
        r"severity=urgent score=\d+\.\d jump_queue=yes hits=(\w+\(-?\d+\.\d\) )+"
        r"MODEL_URGENT\(\d+\.\d p=[01]\.\d\d\) model=\d{4}-\d\d-\d\d\.\d+"
        r" scope=everyone state=down time=now critical=(?:yes|no)"
        r" jump_because=(?:content-rules|matrix-urgent\+model|problem-now\+model)",
        text,
    ), text
    data = verdict.to_json()
    assert {"severity", "jump_queue", "score", "hits", "model_version", "model_vote"} <= set(data)
    assert all({"name", "score"} <= set(hit) for hit in data["hits"])  # type: ignore[attr-defined]


def test_shadow_mode_records_the_vote_but_adds_nothing(default_model_dir: Path) -> None:
    shadow, _ = build_engine(
        SHIPPED_RULES, dataclasses.replace(ClassifierSettings(), shadow=True), default_model_dir
    )
    assert shadow is not None
    verdict = shadow.classify(TextInput("Hi", "Something odd with the app"))
    assert verdict.model_vote is not None and verdict.model_vote.score == 0.0
    assert sum(h.score for h in verdict.hits) == verdict.score
    assert "shadow" in verdict.explain()


def test_model_is_silent_until_trained_on_enough_examples(default_model_dir: Path) -> None:
    strict, _ = build_engine(
        SHIPPED_RULES,
        dataclasses.replace(ClassifierSettings(), min_training_examples=10**6),
        default_model_dir,
    )
    assert strict is not None
    verdict = strict.classify(TextInput("Down", "The portal is down for everyone."))
    assert verdict.model_vote is None and "MODEL_" not in verdict.explain()


def test_model_alone_never_jumps_the_queue(engine: Engine) -> None:
    # Out-of-domain text the model may rate urgent; neither a content rule nor the severity
    # matrix corroborates it.
    verdict = engine.classify(TextInput("Patients waiting room", "Patients waiting room"))
    assert "MATRIX_URGENT" not in {h.name for h in verdict.hits}
    assert sum(h.score for h in verdict.hits) < engine.settings.jump_min_rule_score
    assert not verdict.jump_queue


OUTAGE = TextInput("Portal", "The portal is down for everyone since 9am, nobody can log in.")


def doubting(model_dir: Path, **probabilities: float) -> Engine:
    """The shipped engine with some of the model's jump thresholds raised."""
    engine, _ = build_engine(
        SHIPPED_RULES, dataclasses.replace(ClassifierSettings(), **probabilities), model_dir
    )
    assert engine is not None
    return engine


def test_the_matrix_corroborates_a_jump_only_with_a_confident_model(
    engine: Engine, default_model_dir: Path
) -> None:
    assert engine.classify(OUTAGE).jump_queue
    verdict = doubting(
        default_model_dir,
        jump_min_model_probability=1.0,
        jump_min_model_probability_any_problem=1.0,
    ).classify(OUTAGE)
    assert verdict.severity == "urgent" and not verdict.jump_queue


# Everyone at a clinic locked out of the patient records, said as a caller says it: the tables
# read "connection failed" as one thing wrong, not as down, so the matrix says high, while the
# model is confident it is urgent.
LOCKED_OUT = TextInput(
    "", "hello yes good morning its dr patel at the clinic we were trying to get into the "
    "patient records since about eight and nobody at the front desk or the nurses can get in "
    "at all it just says connection failed could someone ring me back", channel="voicemail",
)


def test_a_problem_now_and_a_model_surer_still_jump_when_the_matrix_does_not_read_urgent(
    engine: Engine, default_model_dir: Path
) -> None:
    verdict = engine.classify(LOCKED_OUT)
    assert "MATRIX_URGENT" not in {h.name for h in verdict.hits}, verdict.explain()
    assert "MATRIX_LOW" not in {h.name for h in verdict.hits}, verdict.explain()
    assert verdict.model_vote is not None and verdict.model_vote.level == "urgent"
    assert verdict.severity == "urgent" and verdict.jump_queue, verdict.explain()
    unsure = doubting(default_model_dir, jump_min_model_probability_any_problem=1.0)
    assert not unsure.classify(LOCKED_OUT).jump_queue


@pytest.mark.parametrize(
    ("content", "matrix", "p_urgent", "evidence"),
    [
        (2.5, "low", 0.0, "content-rules"),  # content rules at full score, whatever else says
        (2.4, "urgent", 0.69, ""),
        (0.0, "urgent", 0.7, "matrix-urgent+model"),  # the matrix reads urgent, a sure model
        (0.0, "high", 0.79, ""),
        (0.0, "high", 0.8, "problem-now+model"),  # a problem now, the model surer still
        (0.0, "normal", 0.8, "problem-now+model"),
        (0.0, "low", 1.0, ""),  # a question, or a past or planned event: never the model's word
    ],
)
def test_a_jump_needs_content_rules_or_the_matrix_and_the_model_together(
    content: float, matrix: str, p_urgent: float, evidence: str
) -> None:
    defaults = ClassifierSettings()
    assert (defaults.jump_min_model_probability,
            defaults.jump_min_model_probability_any_problem) == (0.7, 0.8)
    assert jump_corroboration(content, matrix, p_urgent, defaults) == evidence


def test_the_explanation_says_why_an_urgent_message_jumped_or_did_not(
    engine: Engine, default_model_dir: Path
) -> None:
    jumped = engine.classify(OUTAGE)
    assert jumped.jump_queue and jumped.jump_reason
    assert f"jump_because={jumped.jump_reason}" in jumped.explain()
    assert jumped.to_json()["jump_reason"] == jumped.jump_reason
    unsure = doubting(
        default_model_dir,
        jump_min_model_probability=1.0,
        jump_min_model_probability_any_problem=1.0,
        jump_min_rule_score=100.0,
    ).classify(OUTAGE)
    assert unsure.severity == "urgent" and not unsure.jump_queue
    assert "no_jump_because=no-corroboration" in unsure.explain()
    quiet = engine.classify(TextInput("Printer", "The label printer jams now and then."))
    assert quiet.severity != "urgent" and quiet.jump_reason == ""
    assert "jump_because" not in quiet.explain()


def test_an_outage_report_that_also_asks_a_question_stays_urgent(engine: Engine) -> None:
    verdict = engine.classify(TextInput(
        "Booking system", "Our booking system has been down for all staff since 8am. Is there "
        "anything we can do in the meantime?"))
    assert verdict.severity == "urgent", verdict.explain()
    assert "state=down" in verdict.dimensions


def test_thanks_for_fixing_a_past_outage_is_not_an_outage(engine: Engine) -> None:
    verdict = engine.classify(TextInput(
        "Thank you", "Thanks for fixing yesterday's outage so quickly, everything is back to "
        "normal now."))
    assert verdict.severity not in ("urgent", "high") and not verdict.jump_queue
    assert "KW_DOWN" not in {h.name for h in verdict.hits}  # routing floors outages on it


def test_html_only_mail_never_jumps_the_queue(engine: Engine) -> None:
    html_only = dataclasses.replace(OUTAGE, headers=(("content-type", "text/html"),))
    verdict = engine.classify(html_only)
    assert not verdict.jump_queue and "HTML_ONLY" in verdict.guards


def test_classifier_never_imports_gateway_or_channels() -> None:
    root = Path(__file__).resolve().parents[2] / "classifiers"
    for path in root.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import)\s+(gateway|channels)\b", source, re.M), path
