"""Escalation decisions: which escalations a ticket is due at an instant, and to whom.

Owns the rules of escalation, as a pure function of a ticket's clock facts (`TicketClock`), the
admin's `[escalation]` settings (`EscalationPolicy`) and `now`: `due_escalations`. Must never
read a clock, touch the database or send anything: `escalation_scheduler` does that, and records
each result exactly once under the unique (ticket, target, step) constraint.

Semantics (each one pinned by a test in tests/test_escalation.py):
- Targets. `first_response` and `resolution` exist when the ticket has both the target's minutes
  and its due time (the SLA stage placed it on a calendar); a ticket with neither target never
  escalates, not even for lingering. Each target runs its own clock from `created_at`, in
  business minutes of the ticket's calendar, so closed hours, nights, weekends and holidays
  never count and nothing comes due at midnight (Zammad #4432). The targets are independent:
  a first response stops the first-response clock only, and an event of one target never
  stands in for, overrides or suppresses the other's (Zammad #5177).
- first_response counts until `first_response_at` is set; from then on it never escalates
  (a breach noticed only after the response was sent is not worth waking anyone for).
- resolution counts until the ticket is resolved or closed, less the time spent waiting on the
  customer: every recorded pause, and an ongoing one from `waiting_since` up to `now`.
- Kinds. `near` when elapsed >= near_percent % of the target (skipped when near_percent is 0),
  `breach` at 100 %. Each (target, kind) happens at most once per ticket. A target first seen
  already past 100 % (the scheduler was down, or near and breach fall within one interval)
  escalates once, as `breach`: its `near` is superseded, never sent afterwards.
- Linger (target `activity`): when the business minutes since `last_activity_at` (else
  `created_at`), less time waiting on the customer, reach linger_hours * 60 (0 = off). Once
  per quiet spell: a new linger needs activity after the last one was recorded.
- Only open tickets (new, open, waiting, reopened) escalate; resolved and closed never do.
- Steps. Escalations form one ladder per ticket: the ticket's `escalation_level` is the number
  of the last step it reached (0 = none). The escalations due at one instant are taken in the
  order first_response, resolution, activity; each takes the NEXT step, level + 1, then
  level + 2, ... and raises the level to it. A step number is recorded once per ticket (hence
  unique per (ticket, target, step)). Whom a step notifies is capped at the last configured
  step: step k notifies `steps[min(k, len(steps)) - 1]`, so a ticket past the end of the
  ladder keeps telling the last (most senior) address and no escalation is ever dropped for
  want of a step. No configured steps: nobody to tell, escalation is off (nothing is due).
- A ticket whose calendar is gone from calendars.toml runs on a 24/7 UTC clock: it escalates
  early rather than never.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.config.schema import EscalationSection
from gateway.policy.calendars import (
    Calendar,
    CalendarClosedError,
    add_business_minutes_with_pauses,
    business_minutes_between,
)

Target = Literal["first_response", "resolution", "activity"]
Kind = Literal["near", "breach", "linger"]
Span = tuple[dt.datetime, dt.datetime]

# Tickets in these states are being worked on; resolved and closed tickets never escalate.
# (The same set as storage.queries.OPEN_STATUSES, the queue's; a test keeps them equal.)
OPEN_STATUSES = ("new", "open", "waiting", "reopened")
TARGET_ORDER: tuple[Target, ...] = ("first_response", "resolution", "activity")
ROUND_THE_CLOCK = Calendar("24/7 (calendar missing)", ZoneInfo("UTC"), always=True)


@dataclass(frozen=True)
class Step:
    """One rung of the ladder: whom to tell."""

    notify: str
    name: str = ""


@dataclass(frozen=True)
class EscalationPolicy:
    """The `[escalation]` table of severity.toml, as the rules read it."""

    near_percent: int = 80
    linger_minutes: float = 24 * 60
    steps: tuple[Step, ...] = ()

    @classmethod
    def from_section(cls, section: EscalationSection) -> EscalationPolicy:
        return cls(
            near_percent=section.near_percent,
            linger_minutes=section.linger_hours * 60,
            steps=tuple(Step(s.notify, s.name) for s in section.steps),
        )

    def step(self, number: int) -> Step:
        """Whom step `number` (1-based) notifies: capped at the last configured step."""
        return self.steps[min(number, len(self.steps)) - 1]


@dataclass(frozen=True)
class Recorded:
    """An escalation already recorded for the ticket (an `escalations` row)."""

    target: str
    kind: str
    step: int
    at: dt.datetime


@dataclass(frozen=True)
class TicketClock:
    """What escalation needs to know about one ticket. All instants aware."""

    created_at: dt.datetime
    status: str
    # The ticket's calendar; None when its name is no longer in calendars.toml (24/7 then).
    calendar: Calendar | None
    first_response_minutes: int | None = None
    first_response_due: dt.datetime | None = None
    first_response_at: dt.datetime | None = None
    resolution_minutes: int | None = None
    resolution_due: dt.datetime | None = None
    # Spans waiting on the customer, [begin, end); an ongoing one ends at None.
    pauses: tuple[tuple[dt.datetime, dt.datetime | None], ...] = ()
    waiting_since: dt.datetime | None = None
    last_activity_at: dt.datetime | None = None
    escalation_level: int = 0
    recorded: tuple[Recorded, ...] = ()


@dataclass(frozen=True)
class Escalation:
    """One escalation due now: record it, raise the ticket to `step`, tell `notify`."""

    target: Target
    kind: Kind
    step: int
    notify: str
    step_name: str
    # When the target is (or was) due; for a linger, when the quiet spell reached the limit.
    due_at: dt.datetime
    # Business minutes elapsed on the target's clock, and the limit they are measured against.
    elapsed_minutes: float
    target_minutes: float
    reason: str


@dataclass(frozen=True)
class _Found:
    target: Target
    kind: Kind
    due_at: dt.datetime
    elapsed: float
    limit: float
    reason: str


def due_escalations(
    clock: TicketClock, policy: EscalationPolicy, now: dt.datetime
) -> tuple[Escalation, ...]:
    """The escalations `clock`'s ticket is due at `now` and has not had yet (see the module's
    semantics), in ladder order. Empty when nothing is due."""
    if not policy.steps or clock.status not in OPEN_STATUSES:
        return ()
    has_first = clock.first_response_minutes is not None and clock.first_response_due is not None
    has_resolution = clock.resolution_minutes is not None and clock.resolution_due is not None
    if not has_first and not has_resolution:
        return ()
    cal = clock.calendar or ROUND_THE_CLOCK
    start = min(clock.created_at, now)
    pauses = _pauses(clock, now)
    found: list[_Found] = []
    if has_first and clock.first_response_at is None:
        assert clock.first_response_minutes is not None
        found.extend(
            _target(clock, policy, "first_response", cal, start, now, clock.first_response_minutes)
        )
    if has_resolution:
        assert clock.resolution_minutes is not None
        found.extend(
            _target(clock, policy, "resolution", cal, start, now, clock.resolution_minutes, pauses)
        )
    if policy.linger_minutes > 0:
        found.extend(_linger(clock, policy, cal, now, pauses))
    found.sort(key=lambda f: TARGET_ORDER.index(f.target))
    out: list[Escalation] = []
    for i, f in enumerate(found):
        number = clock.escalation_level + i + 1
        step = policy.step(number)
        out.append(
            Escalation(
                target=f.target,
                kind=f.kind,
                step=number,
                notify=step.notify,
                step_name=step.name or f"step {number}",
                due_at=f.due_at,
                elapsed_minutes=f.elapsed,
                target_minutes=f.limit,
                reason=f.reason,
            )
        )
    return tuple(out)


def _pauses(clock: TicketClock, now: dt.datetime) -> list[Span]:
    """Time waiting on the customer up to `now`; an ongoing pause runs until `now`."""
    spans: list[Span] = []
    for begin, end in clock.pauses:
        stop = now if end is None else min(end, now)
        if begin < stop:
            spans.append((begin, stop))
    if clock.waiting_since is not None and clock.waiting_since < now:
        spans.append((clock.waiting_since, now))
    return spans


def _target(
    clock: TicketClock,
    policy: EscalationPolicy,
    target: Target,
    cal: Calendar,
    start: dt.datetime,
    now: dt.datetime,
    minutes: int,
    pauses: Sequence[Span] = (),
) -> list[_Found]:
    done = {r.kind for r in clock.recorded if r.target == target}
    if "breach" in done:
        return []
    elapsed = business_minutes_between(cal, start, now, pauses)
    label = target.replace("_", " ")
    due = _due(cal, start, minutes, pauses, fallback=_stored_due(clock, target))
    # Compared as elapsed * 100 >= minutes * percent: exact at the boundary for whole minutes.
    if elapsed >= minutes:
        reason = f"{label} target of {minutes} business minutes breached (due {due.isoformat()})"
        return [_Found(target, "breach", due, elapsed, minutes, reason)]
    near = policy.near_percent
    if near > 0 and elapsed * 100 >= minutes * near and "near" not in done:
        reason = (
            f"{label}: {elapsed:.0f} of {minutes} business minutes used "
            f"(>= {near} %), due {due.isoformat()}"
        )
        return [_Found(target, "near", due, elapsed, minutes, reason)]
    return []


def _linger(
    clock: TicketClock,
    policy: EscalationPolicy,
    cal: Calendar,
    now: dt.datetime,
    pauses: list[Span],
) -> list[_Found]:
    since = min(clock.last_activity_at or clock.created_at, now)
    # Once per quiet spell: a linger recorded after the last activity already covers it.
    if any(r.target == "activity" and r.at >= since for r in clock.recorded):
        return []
    quiet = business_minutes_between(cal, since, now, pauses)
    if quiet < policy.linger_minutes:
        return []
    due = _due(cal, since, policy.linger_minutes, pauses, fallback=now)
    reason = (
        f"no activity for {quiet / 60:.1f} business hours "
        f"(limit {policy.linger_minutes / 60:g}) since {since.isoformat()}"
    )
    return [_Found("activity", "linger", due, quiet, policy.linger_minutes, reason)]


def _stored_due(clock: TicketClock, target: Target) -> dt.datetime | None:
    return clock.first_response_due if target == "first_response" else clock.resolution_due


def _due(
    cal: Calendar,
    start: dt.datetime,
    minutes: float,
    pauses: Sequence[Span],
    fallback: dt.datetime | None,
) -> dt.datetime:
    """When the clock reaches `minutes` (pauses so far taken out), in UTC."""
    try:
        return add_business_minutes_with_pauses(cal, start, minutes, pauses)
    except CalendarClosedError:
        return (fallback or start).astimezone(dt.UTC)
