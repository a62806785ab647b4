"""The support contract from the sample config: entitlement by plan order, SLA due times on the
business calendar, and a ceiling no lift can break. Pure functions, a frozen clock."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.config.loader import Settings, load
from gateway.policy.calendars import build_calendars
from gateway.policy.directory import Directory
from gateway.policy.plans import Plans, cap_lift, check_channel_entitlement, due_times, sla_for
from tests.helpers import ROOT, configure

NY = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load(ROOT / "config")


@pytest.fixture(scope="module")
def directory(settings: Settings) -> Directory:
    return Directory.build(settings.customers, settings.plans)


def test_a_basic_plan_email_is_entitled(settings: Settings, directory: Directory) -> None:
    bluebird = directory.identify("sam@bluebird.example", "smtp")
    assert bluebird.plan == "basic"
    assert check_channel_entitlement(bluebird, "smtp", Plans.build(settings.plans)).entitled


def test_a_basic_plan_sms_is_rejected_as_the_plan_says(settings: Settings) -> None:
    directory = Directory.build(settings.customers, settings.plans)
    plans = Plans.build(settings.plans)
    bluebird = directory.identify("sam@bluebird.example", "smtp")
    verdict = check_channel_entitlement(bluebird, "twilio-sms", plans)
    assert (verdict.entitled, verdict.action) == (False, "reject")
    assert verdict.included == ("email",)
    assert "does not include sms" in verdict.reason


def test_an_unentitled_channel_on_a_downgrade_plan_is_downgraded(settings: Settings) -> None:
    plans = Plans.build(settings.plans)
    acme = Directory.build(settings.customers, settings.plans).identify(
        "dana@acme-clinic.example", "smtp"
    )
    verdict = check_channel_entitlement(acme, "slack", plans)
    assert (verdict.entitled, verdict.action) == (False, "downgrade")


def test_a_growth_plan_sms_is_entitled(settings: Settings, directory: Directory) -> None:
    acme = directory.identify("+1 (617) 555-0100", "twilio-sms")
    assert (acme.account_id, acme.plan) == ("acme-clinic", "growth")
    assert check_channel_entitlement(acme, "twilio-sms", Plans.build(settings.plans)).entitled


def test_unknown_senders_get_the_none_plan(directory: Directory) -> None:
    stranger = directory.identify("who@nowhere.example", "smtp")
    assert (stranger.account_id, stranger.plan, stranger.known) == ("unknown", "none", False)


def test_plans_compare_by_order_never_by_name(settings: Settings) -> None:
    plans = Plans.build(settings.plans)
    assert plans.at_least("custom", "growth") and plans.at_least("growth", "growth")
    assert not plans.at_least("basic", "growth")


@pytest.mark.parametrize(
    ("level", "created_local", "first_due_local", "resolution_due_local"),
    [
        # Level 1 mid-morning: 1 business hour; 24 business hours, skipping Thanksgiving
        # (a holiday in the sample calendar): 8 h Tue + 10 h Wed + 6 h Fri.
        ("urgent", "2026-11-24 10:00", "2026-11-24 11:00", "2026-11-27 14:00"),
        # 17:59: one minute today, 59 tomorrow morning.
        ("urgent", "2026-11-24 17:59", "2026-11-25 08:59", "2026-11-30 11:59"),
        # 18:00 is closed: the clock starts at the next opening.
        ("urgent", "2026-11-24 18:00", "2026-11-25 09:00", "2026-11-30 12:00"),
        # Friday evening: Monday morning.
        ("high", "2026-11-20 19:30", "2026-11-23 12:00", "2026-12-03 10:00"),
        # The night before Thanksgiving: the clock starts on Friday.
        ("urgent", "2026-11-25 20:00", "2026-11-27 09:00", "2026-12-01 12:00"),
        # Level 4: 48 business hours first response; 240 resolved, ending on a closing instant
        # (Christmas Day is a holiday).
        ("low", "2026-11-23 08:00", "2026-11-30 16:00", "2026-12-28 18:00"),
    ],
)
def test_due_times_run_on_business_hours(
    settings: Settings,
    level: str,
    created_local: str,
    first_due_local: str,
    resolution_due_local: str,
) -> None:
    plans = Plans.build(settings.plans)
    calendars = build_calendars(settings.calendars)
    created = datetime.fromisoformat(created_local).replace(tzinfo=NY)
    sla = sla_for(settings.severity, plans, level, "growth")
    due = due_times(sla, calendars, created)
    assert due.first_response == datetime.fromisoformat(first_due_local).replace(tzinfo=NY)
    assert due.resolution == datetime.fromisoformat(resolution_due_local).replace(tzinfo=NY)


def test_a_plan_override_runs_urgent_tickets_on_a_24_7_clock(settings: Settings) -> None:
    plans = Plans.build(settings.plans)
    sla = sla_for(settings.severity, plans, "urgent", "custom")
    assert (sla.first_response_minutes, sla.calendar) == (30, "always")
    midnight = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)  # a Saturday
    due = due_times(sla, build_calendars(settings.calendars), midnight)
    assert due.first_response == datetime(2026, 11, 28, 0, 30, tzinfo=UTC)


def test_remembered_due_times_follow_a_reloaded_calendar(settings: Settings) -> None:
    """due_times remembers its answers (issue 20 outcome 1), keyed on the calendar's value: a
    calendar of the same name with other hours, as a reload builds it, gets its own answer."""
    from dataclasses import replace

    plans = Plans.build(settings.plans)
    sla = sla_for(settings.severity, plans, "high", "growth")
    calendars = build_calendars(settings.calendars)
    start = datetime(2026, 11, 23, 8, 0, tzinfo=NY)
    before = due_times(sla, calendars, start)
    assert due_times(sla, calendars, start) == before
    later = {
        name: replace(cal, weekly=tuple(((600, 1080),) if day else () for day in cal.weekly))
        for name, cal in calendars.items()
    }
    assert due_times(sla, later, start).first_response != before.first_response


LEVELS = ("urgent", "high", "normal", "low")


def test_a_severity_floor_never_lifts_a_ticket_above_its_plans_ceiling() -> None:
    # basic's ceiling is high: a floor of urgent lifts a low ticket to high, no further.
    assert cap_lift(LEVELS, "low", "urgent", "high") == "high"
    assert cap_lift(LEVELS, "low", "normal", "high") == "normal"
    # A floor never lowers, and content already above the ceiling is kept.
    assert cap_lift(LEVELS, "urgent", "normal", "high") == "urgent"
    assert cap_lift(LEVELS, "normal", None, "high") == "normal"
    assert cap_lift(LEVELS, "low", "urgent", "") == "urgent"


# ---- the decision, through the same stages the worker runs -------------------------------


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, trained_models: Path):  # type: ignore[no-untyped-def]
    """The sample config's runtime, its state (the model) in a temporary directory: loaded
    from the checkout's config/ itself, it wrote a model into config/.state."""
    from gateway.service.runtime import load_runtime

    base = tmp_path_factory.mktemp("policy")
    shutil.copytree(trained_models, base / "state" / "models")
    return load_runtime(configure(ROOT / "config", base / "config", base / "state"))


def _decide(runtime, sender: str, channel: str, subject: str, body: str):  # type: ignore[no-untyped-def]
    from gateway.explain import explain
    from tests.helpers import make_email

    at = datetime(2026, 11, 24, 10, 0, tzinfo=NY)
    raw = make_email(subject=subject, body=body, sender="placeholder@example.net")
    return explain(runtime, raw, channel=channel, at=at, sender=sender).decision


def test_a_basic_plan_sms_gets_one_polite_rejection_naming_the_included_channels(
    runtime,  # type: ignore[no-untyped-def]
) -> None:
    from gateway.stages.decide import Reject

    decision = _decide(runtime, "sam@bluebird.example", "twilio-sms", "", "printer jammed")
    assert isinstance(decision.outcome, Reject)
    (reply,) = decision.replies
    assert reply.template == "unentitled"
    assert dict(reply.values) == {"channel": "sms", "included": "email"}


def test_a_downgraded_channel_makes_a_normal_ticket_that_does_not_jump(
    runtime,  # type: ignore[no-untyped-def]
) -> None:
    from gateway.stages.decide import Accept

    decision = _decide(
        runtime,
        "dana@acme-clinic.example",
        "slack",
        "Everything is down",
        "None of our staff can open the application since 7am.",
    )
    assert isinstance(decision.outcome, Accept)
    assert decision.severity == "normal" and decision.jump_queue is False
    assert any(r.stage == "entitlement" and r.code == "downgrade" for r in decision.reasons)


def test_the_none_plan_never_jumps_the_queue(runtime) -> None:  # type: ignore[no-untyped-def]
    decision = _decide(
        runtime,
        "who@nowhere.example",
        "smtp",
        "Everything is down",
        "None of our staff can open the application since 7am.",
    )
    assert decision.jump_queue is False
    assert any(r.code == "no-jump" for r in decision.reasons)


def test_a_routing_floor_is_capped_at_a_basic_plans_ceiling(runtime) -> None:  # type: ignore[no-untyped-def]
    import tomllib
    from dataclasses import replace

    from gateway.config.schema import RoutingFile
    from gateway.config.validate import build
    from gateway.policy.routing import build_router

    table = tomllib.loads(
        'default_queue = "support"\n[[rule]]\nname = "LIFT_ALL"\nqueue = "support"\n'
        'severity_floor = "urgent"\n[rule.match]\nchannel = ["email"]\n'
    )
    routing, problems = build(RoutingFile, table, ROOT / "config" / "routing.toml")
    assert routing is not None and not problems
    router = build_router(
        routing,
        [p.name for p in runtime.policy.plans.ordered],
        runtime.policy.severity.levels,
        runtime.policy.calendars,
    )
    lifted = replace(runtime, policy=replace(runtime.policy, router=router))
    basic = _decide(lifted, "sam@bluebird.example", "smtp", "Question", "How do I print labels?")
    growth = _decide(
        lifted, "dana@acme-clinic.example", "smtp", "Question", "How do I print labels?"
    )
    assert basic.severity == "high"  # basic's ceiling
    assert growth.severity == "urgent"  # growth has no ceiling
