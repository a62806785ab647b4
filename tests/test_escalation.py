"""Escalation: a ticket left untouched escalates exactly once per step at the right time, and its
notification goes out once — on business hours (no midnight escalations, Zammad #4432), with each
target on its own clock (Zammad #5177), across repeated runs and racing schedulers.

Every clock here is frozen: `now` is passed explicitly, nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway import clock as business_clock
from gateway.cli.main import main
from gateway.config.errors import ConfigError
from gateway.config.loader import load
from gateway.config.schema import CalendarDef
from gateway.outbound import escalation_scheduler
from gateway.outbound.escalation_scheduler import Escalated, run_once
from gateway.policy.calendars import (
    Calendar,
    add_business_minutes,
    build_calendar,
    is_open,
    next_opening,
)
from gateway.policy.escalation import (
    Escalation,
    EscalationPolicy,
    Recorded,
    Step,
    TicketClock,
    due_escalations,
)
from gateway.storage.db import make_engine, session_factory
from gateway.storage.models import EscalationEvent, OutboxRow, Ticket, TicketEvent, TicketPause
from gateway.storage.queries import OPEN_STATUSES, as_utc
from tests.helpers import Gateway, make_email, wait_for

NY = ZoneInfo("America/New_York")
BUSINESS = build_calendar(
    "business", CalendarDef(timezone="America/New_York", hours={"mon-fri": ("08:00-18:00",)})
)
POLICY = EscalationPolicy(
    near_percent=80,
    linger_minutes=24 * 60,
    steps=(Step("team-lead@example.com", "team lead"), Step("head@example.com", "head")),
)


def ny(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    """An instant in New York in late 2026 (30 November 2026 is a Monday)."""
    return datetime(2026, month, day, hour, minute, tzinfo=NY)


def clock(
    created: datetime,
    *,
    fr: int | None = 60,
    res: int | None = 600,
    cal: Calendar | None = BUSINESS,
    **changes: Any,
) -> TicketClock:
    base = TicketClock(
        created_at=created,
        status="new",
        calendar=cal,
        first_response_minutes=fr,
        first_response_due=add_business_minutes(cal or BUSINESS, created, fr) if fr else None,
        resolution_minutes=res,
        resolution_due=add_business_minutes(cal or BUSINESS, created, res) if res else None,
        last_activity_at=created,
    )
    return dataclasses.replace(base, **changes)


def record(c: TicketClock, events: tuple[Escalation, ...], now: datetime) -> TicketClock:
    """What the scheduler does with the result: record each, raise the level."""
    if not events:
        return c
    return dataclasses.replace(
        c,
        escalation_level=events[-1].step,
        recorded=c.recorded + tuple(Recorded(e.target, e.kind, e.step, now) for e in events),
    )


def kinds(events: tuple[Escalation, ...] | list[Escalated]) -> list[tuple[str, str, int]]:
    return [(e.target, e.kind, e.step) for e in events]


# ---- the pure rules (gateway/policy/escalation.py) ------------------------------------------


def test_escalation_counts_open_tickets_like_the_queue() -> None:
    from gateway.policy import escalation

    assert escalation.OPEN_STATUSES == OPEN_STATUSES


def test_an_untouched_ticket_nears_at_80_percent_and_breaches_at_100_percent() -> None:
    c = clock(ny(30, 9))  # Monday 09:00, first response within 60 business minutes
    assert due_escalations(c, POLICY, ny(30, 9, 47)) == ()
    (near,) = due_escalations(c, POLICY, ny(30, 9, 48))
    assert (near.target, near.kind, near.step, near.notify) == (
        "first_response",
        "near",
        1,
        "team-lead@example.com",
    )
    assert near.due_at == ny(30, 10).astimezone(UTC)
    c = record(c, (near,), ny(30, 9, 48))
    assert due_escalations(c, POLICY, ny(30, 9, 59)) == ()
    (breach,) = due_escalations(c, POLICY, ny(30, 10))
    assert (breach.kind, breach.step, breach.notify) == ("breach", 2, "head@example.com")
    c = record(c, (breach,), ny(30, 10))
    assert due_escalations(c, POLICY, ny(30, 12)) == ()


def test_a_target_first_seen_past_100_percent_escalates_once_as_a_breach() -> None:
    c = clock(ny(30, 9), res=None)
    events = due_escalations(c, POLICY, ny(30, 11))
    assert kinds(events) == [("first_response", "breach", 1)]
    c = record(c, events, ny(30, 11))
    assert due_escalations(c, POLICY, ny(30, 11, 1)) == ()


def test_past_the_last_step_every_escalation_still_happens_and_tells_the_last_address() -> None:
    c = clock(ny(30, 9), escalation_level=5)
    (e,) = due_escalations(c, POLICY, ny(30, 9, 50))
    assert (e.step, e.notify, e.step_name) == (6, "head@example.com", "head")


def test_first_response_sent_stops_its_clock_but_never_the_resolution_clock() -> None:
    c = clock(ny(30, 9), first_response_at=ny(30, 9, 30))
    assert due_escalations(c, POLICY, ny(30, 16, 59)) == ()
    # Resolution: 480 of 600 business minutes at Monday 17:00.
    (e,) = due_escalations(c, POLICY, ny(30, 17))
    assert (e.target, e.kind, e.step) == ("resolution", "near", 1)


def test_a_resolution_escalation_does_not_stand_in_for_first_response() -> None:
    # Zammad #5177: a recorded resolution event must not hide the first-response breach.
    c = clock(ny(30, 9), recorded=(Recorded("resolution", "breach", 1, ny(30, 9, 1)),))
    c = dataclasses.replace(c, escalation_level=1)
    (e,) = due_escalations(c, POLICY, ny(30, 10))
    assert (e.target, e.kind, e.step) == ("first_response", "breach", 2)


def test_time_waiting_on_the_customer_does_not_count_towards_resolution_or_linger() -> None:
    c = clock(
        ny(30, 9),
        first_response_at=ny(30, 9, 30),
        status="waiting",
        waiting_since=ny(30, 10),
        pauses=((ny(30, 10), None),),
    )
    # A week of waiting: one business hour used, nothing due, no lingering.
    assert due_escalations(c, POLICY, ny(7, 12, month=12)) == ()
    # The customer answered Tuesday 10:00: 1 + 7 hours later the resolution target is near.
    c = dataclasses.replace(
        c,
        status="open",
        waiting_since=None,
        pauses=((ny(30, 10), ny(1, 10, month=12)),),
        last_activity_at=ny(1, 10, month=12),
    )
    assert due_escalations(c, POLICY, ny(1, 16, 59, month=12)) == ()
    (e,) = due_escalations(c, POLICY, ny(1, 17, month=12))
    assert (e.target, e.kind) == ("resolution", "near")
    # Due: 600 minutes of running clock, the pause taken out: Mon 1 h + Tue 8 h + Wed 1 h.
    assert e.due_at == ny(2, 9, month=12).astimezone(UTC)


@pytest.mark.parametrize("status", ["resolved", "closed"])
def test_resolved_and_closed_tickets_never_escalate(status: str) -> None:
    c = clock(ny(30, 9), status=status)
    assert due_escalations(c, POLICY, ny(30, 9) + timedelta(days=60)) == ()


def test_a_ticket_without_targets_never_escalates_not_even_for_lingering() -> None:
    c = clock(ny(30, 9), fr=None, res=None)
    assert due_escalations(c, POLICY, ny(30, 9) + timedelta(days=60)) == ()


def test_no_configured_steps_means_escalation_is_off() -> None:
    c = clock(ny(30, 9))
    assert due_escalations(c, EscalationPolicy(steps=()), ny(30, 9) + timedelta(days=9)) == ()


def test_near_percent_zero_turns_near_warnings_off() -> None:
    policy = dataclasses.replace(POLICY, near_percent=0)
    c = clock(ny(30, 9))
    assert due_escalations(c, policy, ny(30, 9, 59)) == ()
    assert kinds(due_escalations(c, policy, ny(30, 10))) == [("first_response", "breach", 1)]


def test_linger_once_per_quiet_spell_on_business_hours() -> None:
    policy = dataclasses.replace(POLICY, near_percent=0)
    c = clock(ny(30, 9), fr=None, res=100000)  # only the linger clock matters
    # 24 business hours after Monday 09:00: Mon 9 h + Tue 10 h + Wed 5 h -> Wed 13:00.
    assert due_escalations(c, policy, ny(2, 12, 59, month=12)) == ()
    events = due_escalations(c, policy, ny(2, 13, month=12))
    assert kinds(events) == [("activity", "linger", 1)]
    c = record(c, events, ny(2, 13, month=12))
    assert due_escalations(c, policy, ny(9, 13, month=12)) == ()
    # Activity starts a new spell, which may linger again (the next step).
    # Thursday 09:00; 24 business hours later is Monday 13:00 (Thu 9 h + Fri 10 h + Mon 5 h).
    c = dataclasses.replace(c, last_activity_at=ny(3, 9, month=12))
    assert due_escalations(c, policy, ny(7, 12, 59, month=12)) == ()
    assert kinds(due_escalations(c, policy, ny(7, 13, month=12))) == [("activity", "linger", 2)]


def test_a_ticket_whose_calendar_is_gone_runs_on_a_24_7_clock() -> None:
    c = clock(ny(5, 12, month=12), cal=None)  # a Saturday
    assert kinds(due_escalations(c, POLICY, ny(5, 13, month=12))) == [
        ("first_response", "breach", 1)
    ]


def test_friday_evening_ticket_does_not_breach_over_the_weekend_pure() -> None:
    c = clock(ny(4, 17, 30, month=12), res=None)  # Friday 17:30, 60 minutes
    t = ny(4, 17, 30, month=12)
    while t < ny(7, 8, 18, month=12):
        assert due_escalations(c, POLICY, t) == (), t
        t += timedelta(minutes=15)
    assert kinds(due_escalations(c, POLICY, ny(7, 8, 18, month=12))) == [
        ("first_response", "near", 1)
    ]


instants = st.datetimes(
    min_value=datetime(2026, 11, 1), max_value=datetime(2027, 3, 31), timezones=st.just(UTC)
)


@settings(max_examples=60, deadline=None)
@given(
    created=instants, first=st.integers(0, 4000), gaps=st.lists(st.integers(1, 3000), max_size=25)
)
def test_sampled_at_any_times_each_target_kind_happens_at_most_once_with_rising_steps(
    created: datetime, first: int, gaps: list[int]
) -> None:
    c = clock(created, fr=60, res=600)
    now = created + timedelta(minutes=first)
    seen: list[Escalation] = []
    for gap in [0, *gaps]:
        now += timedelta(minutes=gap)
        events = due_escalations(c, POLICY, now)
        seen.extend(events)
        c = record(c, events, now)
    pairs = [(e.target, e.kind) for e in seen if e.target != "activity"]
    assert len(pairs) == len(set(pairs))
    assert [e.step for e in seen] == list(range(1, len(seen) + 1))
    # The last instant is past the first-response due time: its breach was recorded, once.
    if c.first_response_due is not None and now >= c.first_response_due:
        assert pairs.count(("first_response", "breach")) == 1


@settings(max_examples=80, deadline=None)
@given(created=instants, after=st.integers(0, 20000))
def test_nothing_comes_due_while_the_calendar_is_closed(created: datetime, after: int) -> None:
    """No midnight (or weekend) escalations: whatever was due before a closed stretch has been
    taken, and reaching the next opening adds nothing new."""
    t1 = created + timedelta(minutes=after)
    if is_open(BUSINESS, t1):
        return
    c = clock(created)
    c = record(c, due_escalations(c, POLICY, t1), t1)
    assert due_escalations(c, POLICY, next_opening(BUSINESS, t1)) == ()


# ---- the scheduler on both databases (gateway/outbound/escalation_scheduler.py) -----------


def new_ticket(
    gw: Gateway,
    created: datetime,
    *,
    fr: int | None = 60,
    res: int | None = 600,
    **columns: Any,
) -> int:
    """A ticket row with this scenario's clock (the pipeline's own are tested at the end).
    Instants are stored in UTC, as the pipeline does (SQLite keeps no offset)."""
    cal = gw.box.current.policy.calendars["business"]
    created = created.astimezone(UTC)
    columns = {k: v.astimezone(UTC) if isinstance(v, datetime) else v for k, v in columns.items()}
    with gw.worker.sessions.begin() as s:
        n = len(s.execute(select(Ticket.id)).all()) + 1
        ticket = Ticket(
            status="new",
            severity="urgent",
            severity_rank=0,
            channel="email",
            account_id="acme-clinic",
            contact_email="dana@acme-clinic.example",
            plan="standard",
            subject=f"Case {n}",
            created_at=created,
            updated_at=created,
            calendar="business",
            first_response_minutes=fr,
            first_response_due=add_business_minutes(cal, created, fr) if fr else None,
            resolution_minutes=res,
            resolution_due=add_business_minutes(cal, created, res) if res else None,
            last_activity_at=created,
            escalation_level=0,
        )
        for name, value in columns.items():
            setattr(ticket, name, value)
        s.add(ticket)
        s.flush()
        ticket.reference = f"T-{ticket.id:06d}"
        return ticket.id


def run(gw: Gateway, now: datetime, dry_run: bool = False) -> list[Escalated]:
    return run_once(gw.worker.sessions, gw.settings, gw.box.current.policy.calendars, now, dry_run)


def escalations(gw: Gateway, ticket_id: int | None = None) -> list[EscalationEvent]:
    with gw.session() as s:
        q = select(EscalationEvent).order_by(EscalationEvent.step)
        if ticket_id is not None:
            q = q.where(EscalationEvent.ticket_id == ticket_id)
        return list(s.execute(q).scalars())


def notifications(gw: Gateway) -> list[OutboxRow]:
    return [r for r in gw.outbox() if r.kind == "escalation"]


def test_an_untouched_ticket_escalates_once_per_step_and_each_notification_is_queued_once(
    gateway: Gateway,
) -> None:
    tid = new_ticket(gateway, ny(30, 9))
    timeline = [
        (ny(30, 9, 47), []),
        (ny(30, 9, 48), [("first_response", "near", 1)]),
        (ny(30, 9, 48), []),
        (ny(30, 9, 59), []),
        (ny(30, 10), [("first_response", "breach", 2)]),
        (ny(30, 10), []),
        (ny(30, 16, 59), []),
        (ny(30, 17), [("resolution", "near", 3)]),
        (ny(30, 23, 59), []),
        (ny(1, 0, 0, month=12), []),  # midnight: nothing
        (ny(1, 8, 59, month=12), []),
        (ny(1, 9, month=12), [("resolution", "breach", 4)]),
        (ny(2, 12, 59, month=12), []),
        (ny(2, 13, month=12), [("activity", "linger", 5)]),
        (ny(3, 13, month=12), []),
        (ny(10, 13, month=12), []),
    ]
    for now, expected in timeline:
        assert kinds(run(gateway, now)) == expected, now
    recorded = escalations(gateway, tid)
    assert [(e.target, e.kind, e.step) for e in recorded] == [
        ("first_response", "near", 1),
        ("first_response", "breach", 2),
        ("resolution", "near", 3),
        ("resolution", "breach", 4),
        ("activity", "linger", 5),
    ]
    rows = notifications(gateway)
    assert [r.recipient for r in rows] == ["team-lead@example.com"] + 4 * [
        "head-of-support@example.com"
    ]
    assert all(r.status == "pending" and r.ticket_id == tid for r in rows)
    assert len({r.header_message_id for r in rows}) == 5
    (ticket,) = [t for t in gateway.tickets() if t.id == tid]
    assert ticket.escalation_level == 5
    first = rows[0]
    assert ticket.reference in first.subject and "first response near" in first.subject
    assert "2026-11-30 10:00 EST" in first.body  # the due time, on the calendar's clock
    with gateway.session() as s:
        audit = list(
            s.execute(
                select(TicketEvent).where(
                    TicketEvent.ticket_id == tid, TicketEvent.kind == "escalation"
                )
            ).scalars()
        )
    assert [(a.old, a.new) for a in audit] == [
        ("0", "1"),
        ("1", "2"),
        ("2", "3"),
        ("3", "4"),
        ("4", "5"),
    ]


def test_a_ticket_whose_first_response_was_sent_escalates_on_resolution_only(
    gateway: Gateway,
) -> None:
    tid = new_ticket(gateway, ny(30, 9), first_response_at=ny(30, 9, 30))
    assert run(gateway, ny(30, 12)) == []
    assert kinds(run(gateway, ny(30, 17))) == [("resolution", "near", 1)]
    assert kinds(run(gateway, ny(1, 9, month=12))) == [("resolution", "breach", 2)]
    assert [e.target for e in escalations(gateway, tid)] == ["resolution", "resolution"]


def test_a_ticket_waiting_on_the_customer_accrues_no_resolution_time(gateway: Gateway) -> None:
    tid = new_ticket(
        gateway,
        ny(30, 9),
        first_response_at=ny(30, 9, 30),
        status="waiting",
        waiting_since=ny(30, 10),
    )
    with gateway.worker.sessions.begin() as s:
        s.add(TicketPause(ticket_id=tid, started_at=ny(30, 10).astimezone(UTC), ended_at=None))
    for day in (1, 2, 3, 4, 7):
        assert run(gateway, ny(day, 17, month=12)) == []
    # The customer answers Tuesday 8 December 10:00: the clock runs again from 1 hour used.
    answered = ny(8, 10, month=12).astimezone(UTC)
    with gateway.worker.sessions.begin() as s:
        ticket = s.get(Ticket, tid)
        assert ticket is not None
        ticket.status, ticket.waiting_since, ticket.last_activity_at = "open", None, answered
        pause = s.execute(select(TicketPause).where(TicketPause.ticket_id == tid)).scalar_one()
        pause.ended_at = answered
    assert run(gateway, ny(8, 16, 59, month=12)) == []
    assert kinds(run(gateway, ny(8, 17, month=12))) == [("resolution", "near", 1)]


@pytest.mark.parametrize("status", ["resolved", "closed"])
def test_resolved_tickets_never_escalate(gateway: Gateway, status: str) -> None:
    new_ticket(gateway, ny(30, 9), status=status)
    assert run(gateway, ny(30, 9) + timedelta(days=30)) == []
    assert escalations(gateway) == [] and notifications(gateway) == []


def test_a_friday_evening_ticket_breaches_monday_0830_not_over_the_weekend(
    gateway: Gateway,
) -> None:
    tid = new_ticket(gateway, ny(4, 17, 30, month=12), res=None)  # Friday 17:30, 60 minutes
    t = ny(4, 17, 30, month=12)
    while t < ny(7, 8, 18, month=12):
        assert run(gateway, t) == [], t  # every hour of the weekend, midnights included
        t += timedelta(hours=1)
    assert kinds(run(gateway, ny(7, 8, 17, month=12))) == []
    assert kinds(run(gateway, ny(7, 8, 18, month=12))) == [("first_response", "near", 1)]
    assert kinds(run(gateway, ny(7, 8, 29, month=12))) == []
    (breach,) = run(gateway, ny(7, 8, 30, month=12))
    assert (breach.kind, breach.due_at) == ("breach", ny(7, 8, 30, month=12).astimezone(UTC))
    assert [e.at.replace(tzinfo=UTC) for e in escalations(gateway, tid)] == [
        ny(7, 8, 18, month=12).astimezone(UTC),
        ny(7, 8, 30, month=12).astimezone(UTC),
    ]


def test_dry_run_records_nothing(gateway: Gateway) -> None:
    tid = new_ticket(gateway, ny(30, 9))
    would = run(gateway, ny(30, 10), dry_run=True)
    assert kinds(would) == [("first_response", "breach", 1)]
    assert run(gateway, ny(30, 10), dry_run=True) == would
    assert escalations(gateway) == [] and notifications(gateway) == []
    (ticket,) = [t for t in gateway.tickets() if t.id == tid]
    assert ticket.escalation_level == 0
    assert kinds(run(gateway, ny(30, 10))) == kinds(would)


def test_gateway_escalate_cli_prints_one_line_per_event_and_dry_run_changes_nothing(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    new_ticket(gateway, ny(30, 9))
    config = str(gateway.settings.directory)
    at = ny(30, 10).isoformat()
    assert main(["--config", config, "escalate", "--dry-run", "--at", at]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith("would escalate T-")
    assert "first_response breach step=1" in out[0] and "notify=team-lead@example.com" in out[0]
    assert escalations(gateway) == []
    assert main(["--config", config, "escalate", "--at", at]) == 0
    assert capsys.readouterr().out.startswith("escalated T-")
    assert main(["--config", config, "escalate", "--at", at]) == 0
    assert capsys.readouterr().out.startswith("nothing to escalate")
    assert len(escalations(gateway)) == 1 and len(notifications(gateway)) == 1
    assert main(["--config", config, "escalate", "--at", "2026-11-30T10:00:00"]) == 2


def test_racing_schedulers_take_each_step_once(gateway: Gateway) -> None:
    ids = [new_ticket(gateway, ny(30, 9)) for _ in range(6)]
    engines = [make_engine(gateway.settings.database_url, immediate=True) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []
    calendars = gateway.box.current.policy.calendars

    def scheduler(engine: Any) -> None:
        sessions = session_factory(engine)
        try:
            barrier.wait()
            for now in (ny(30, 9, 48), ny(30, 10), ny(30, 10), ny(30, 17), ny(1, 9, month=12)):
                run_once(sessions, gateway.settings, calendars, now)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=scheduler, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for e in engines:
        e.dispose()
    assert errors == []
    for tid in ids:
        steps = [(e.target, e.kind, e.step) for e in escalations(gateway, tid)]
        # At most once each; a scheduler late to 09:48 may find the breach already due at 10:00.
        assert len(steps) == len({(t, k) for t, k, _ in steps})
        assert [s for _, _, s in steps] == list(range(1, len(steps) + 1))
        assert ("first_response", "breach") in {(t, k) for t, k, _ in steps}
        assert ("resolution", "breach") in {(t, k) for t, k, _ in steps}
    assert len(notifications(gateway)) == len(escalations(gateway))


def test_a_scheduler_with_a_stale_view_cannot_take_a_step_twice(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unique (ticket, target, step) constraint is the last word: a run that computes an
    already-taken step (another instance's, say) rolls back its savepoint and sends nothing."""
    tid = new_ticket(gateway, ny(30, 9))
    (first,) = due_escalations(
        clock(ny(30, 9).astimezone(UTC), cal=gateway.box.current.policy.calendars["business"]),
        POLICY,
        ny(30, 9, 48),
    )
    monkeypatch.setattr(escalation_scheduler, "due_escalations", lambda *_a: (first,))
    assert kinds(run(gateway, ny(30, 9, 48))) == [("first_response", "near", 1)]
    assert run(gateway, ny(30, 9, 49)) == []
    assert len(escalations(gateway, tid)) == 1 and len(notifications(gateway)) == 1
    (ticket,) = [t for t in gateway.tickets() if t.id == tid]
    assert ticket.escalation_level == 1


def test_a_ticket_made_from_mail_escalates_on_the_clock_the_pipeline_gave_it(
    gateway: Gateway,
) -> None:
    gateway.ingest(make_email())
    gateway.drain()
    (ticket,) = gateway.tickets()
    assert ticket.calendar and ticket.first_response_minutes and ticket.first_response_due
    due = as_utc(ticket.first_response_due)
    assert due is not None
    before = kinds(run(gateway, due - timedelta(microseconds=1)))
    assert ("first_response", "breach") not in {(t, k) for t, k, _ in before}
    at_due = kinds(run(gateway, due))
    assert ("first_response", "breach") in {(t, k) for t, k, _ in at_due}
    assert run(gateway, due) == []
    assert len(notifications(gateway)) == len(escalations(gateway)) == len(before) + len(at_due)


def test_the_worker_outbox_thread_runs_the_scheduler(gateway: Gateway) -> None:
    """Worker 0 escalates on its own (real clock here: a ticket a month overdue)."""
    tid = new_ticket(gateway, business_clock.now() - timedelta(days=30))
    thread = threading.Thread(target=gateway.worker._outbox_loop, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(escalations(gateway, tid)) == 3)
    finally:
        gateway.worker.stopping.set()
        thread.join(timeout=30)
    assert [(e.target, e.kind) for e in escalations(gateway, tid)] == [
        ("first_response", "breach"),
        ("resolution", "breach"),
        ("activity", "linger"),
    ]
    assert len(notifications(gateway)) == 3


# ---- config ------------------------------------------------------------------------------------


def test_the_sample_config_has_two_escalation_steps(make_config: Callable[..., Path]) -> None:
    esc = load(make_config()).severity.escalation
    assert (esc.near_percent, esc.linger_hours, esc.interval_seconds) == (80, 24.0, 60.0)
    assert [s.name for s in esc.steps] == ["team lead", "head of support"]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("near_percent = 80", "near_percent = 150", "escalation.near_percent"),
        ("linger_hours = 24", "linger_hours = -1", "escalation.linger_hours"),
        ("interval_seconds = 60", "interval_seconds = 0", "escalation.interval_seconds"),
        ('notify = "team-lead@example.com"', 'notify = "team lead"', "escalation.steps[0].notify"),
        ('notify = "team-lead@example.com"', 'notfy = "x@example.com"', "escalation.steps[0]"),
    ],
)
def test_a_bad_escalation_setting_names_severity_toml_and_the_key(
    make_config: Callable[..., Path], old: str, new: str, key: str
) -> None:
    config = make_config()
    path = config / "severity.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(ConfigError) as exc:
        load(config)
    assert any(
        p.file == "severity.toml" and (p.key or "").startswith(key) for p in exc.value.problems
    ), [str(p) for p in exc.value.problems]
