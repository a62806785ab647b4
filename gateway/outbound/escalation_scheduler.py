"""The escalation scheduler: finds tickets due an escalation, records each once, tells the step.

Owns the database side of escalation; the rules are `gateway.policy.escalation`'s. `run_once` reads
the open tickets that can be due (one index-friendly query), asks `due_escalations` about each,
and for each ticket with something due, in one short transaction:
  lock the ticket row (`FOR UPDATE SKIP LOCKED` on PostgreSQL: another instance busy with it
  does it instead) -> re-read its clock and recorded escalations -> per escalation, in a
  SAVEPOINT: insert the `escalations` row, raise `tickets.escalation_level`, add a TicketEvent
  (kind "escalation") and queue one OutboxRow (kind "escalation") to the step's address.
The unique (ticket_id, target, step) constraint is what makes each step happen once across
every run and every instance sharing the database: an IntegrityError means someone else took
that step, and the savepoint is rolled back with nothing sent. The outbox row is written in the
same transaction as the escalation, so the notification exists exactly when the escalation does
and goes out once (outbox_sender delivers at least once, with a stable Message-ID).

Escalation mail goes to staff, so it bypasses the customer gate and the per-recipient limit: it
is bounded by construction (one per step per ticket), and suppressing one would hide a breach.

Never decides when a ticket escalates, and never reads the wall clock: `now` is the caller's
(the daemon passes the time; `gateway escalate --at` another one; tests a frozen one).
"""

from __future__ import annotations

import datetime as dt
import logging
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from gateway.config.loader import Settings
from gateway.outbound.outbox import new_message_id
from gateway.policy.calendars import Calendar
from gateway.policy.escalation import (
    OPEN_STATUSES,
    Escalation,
    EscalationPolicy,
    Recorded,
    TicketClock,
    due_escalations,
)
from gateway.storage.models import EscalationEvent, OutboxRow, Ticket, TicketEvent, TicketPause
from gateway.storage.queries import as_utc

log = logging.getLogger(__name__)

TEMPLATE = "escalation"
# Used when config/templates/escalation.<lang>.txt is absent. Same placeholders as the file.
BUILTIN_TEMPLATE = """Subject: [#$reference] Escalation ($step_name): $target $kind: $subject

Ticket $reference has been escalated to step $step ($step_name).

Reason:    $reason
Target:    $target ($kind)
Due:       $due
Ticket:    $severity, queue $queue, account $account, status $status
Subject:   $subject
"""
# Tickets per IN (...) when loading pauses and recorded escalations in bulk.
CHUNK = 500


@dataclass(frozen=True)
class Escalated:
    """One escalation `run_once` recorded (or, in a dry run, would record)."""

    ticket_id: int
    reference: str
    target: str
    kind: str
    step: int
    step_name: str
    notify: str
    due_at: dt.datetime
    reason: str

    def line(self) -> str:
        return (
            f"{self.reference} {self.target} {self.kind} step={self.step} "
            f"({self.step_name}) notify={self.notify} due={self.due_at.isoformat()}"
        )


def run_once(
    sessions: sessionmaker[Session],
    settings: Settings,
    calendars: Mapping[str, Calendar],
    now: dt.datetime,
    dry_run: bool = False,
) -> list[Escalated]:
    """Record every escalation due at `now` (aware); return what was done. `dry_run`: change
    nothing, return what would be done."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(dt.UTC)  # stored as is: SQLite keeps no offset
    policy = EscalationPolicy.from_section(settings.severity.escalation)
    if not policy.steps:
        return []
    with sessions() as session:
        tickets = list(session.execute(_candidates(policy, now)).scalars())
        clocks = _clocks(session, tickets, calendars)
    done: list[Escalated] = []
    for ticket in tickets:
        due = due_escalations(clocks[ticket.id], policy, now)
        if not due:
            continue
        if dry_run:
            done.extend(_escalated(ticket, e) for e in due)
            continue
        done.extend(_escalate(sessions, ticket.id, policy, calendars, settings, now))
    log.debug(
        "escalation at %s: %d open ticket(s) looked at, %d escalation(s)",
        now,
        len(tickets),
        len(done),
    )
    return done


def _candidates(policy: EscalationPolicy, now: dt.datetime) -> Select[Ticket]:
    """Open tickets that can be due anything: those with a running first-response clock, a
    resolution target, or (for lingering) no activity for at least linger_hours of wall-clock
    time — business time never runs faster than the wall clock, so that bound is safe."""
    running = [
        and_(Ticket.first_response_due.is_not(None), Ticket.first_response_at.is_(None)),
        Ticket.resolution_due.is_not(None),
    ]
    if policy.linger_minutes > 0:
        bound = now - dt.timedelta(minutes=policy.linger_minutes)
        running.append(
            and_(
                Ticket.first_response_due.is_not(None),
                or_(Ticket.last_activity_at.is_(None), Ticket.last_activity_at <= bound),
            )
        )
    return select(Ticket).where(Ticket.status.in_(OPEN_STATUSES), or_(*running)).order_by(Ticket.id)


def _clocks(
    session: Session, tickets: Sequence[Ticket], calendars: Mapping[str, Calendar]
) -> dict[int, TicketClock]:
    ids = [t.id for t in tickets]
    pauses: dict[int, list[tuple[dt.datetime, dt.datetime | None]]] = {i: [] for i in ids}
    recorded: dict[int, list[Recorded]] = {i: [] for i in ids}
    for chunk in _chunks(ids):
        query = select(TicketPause).where(TicketPause.ticket_id.in_(chunk))
        for pause in session.execute(query).scalars():
            pauses[pause.ticket_id].append((_utc(pause.started_at), as_utc(pause.ended_at)))
        for row in session.execute(
            select(EscalationEvent).where(EscalationEvent.ticket_id.in_(chunk))
        ).scalars():
            recorded[row.ticket_id].append(Recorded(row.target, row.kind, row.step, _utc(row.at)))
    return {t.id: _clock(t, calendars, pauses[t.id], recorded[t.id]) for t in tickets}


def _clock(
    ticket: Ticket,
    calendars: Mapping[str, Calendar],
    pauses: Iterable[tuple[dt.datetime, dt.datetime | None]],
    recorded: Iterable[Recorded],
) -> TicketClock:
    calendar = calendars.get(ticket.calendar)
    if calendar is None and ticket.calendar:
        log.warning(
            "ticket %s: calendar %r is not in calendars.toml; its escalation clock runs 24/7",
            ticket.reference,
            ticket.calendar,
        )
    return TicketClock(
        created_at=_utc(ticket.created_at),
        status=ticket.status,
        calendar=calendar,
        first_response_minutes=ticket.first_response_minutes,
        first_response_due=as_utc(ticket.first_response_due),
        first_response_at=as_utc(ticket.first_response_at),
        resolution_minutes=ticket.resolution_minutes,
        resolution_due=as_utc(ticket.resolution_due),
        pauses=tuple(pauses),
        waiting_since=as_utc(ticket.waiting_since),
        last_activity_at=as_utc(ticket.last_activity_at),
        escalation_level=ticket.escalation_level,
        recorded=tuple(recorded),
    )


def _escalate(
    sessions: sessionmaker[Session],
    ticket_id: int,
    policy: EscalationPolicy,
    calendars: Mapping[str, Calendar],
    settings: Settings,
    now: dt.datetime,
) -> list[Escalated]:
    """Take the ticket's due escalations under its row lock, each in a SAVEPOINT."""
    done: list[Escalated] = []
    with sessions.begin() as session:
        ticket = session.execute(
            select(Ticket).where(Ticket.id == ticket_id).with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        if ticket is None:
            return done  # another instance holds it and escalates it
        # Re-read under the lock: what we saw before may be stale by now.
        clock = _clocks(session, [ticket], calendars)[ticket.id]
        for escalation in due_escalations(clock, policy, now):
            try:
                with session.begin_nested():
                    _record(session, ticket, escalation, settings, calendars, now)
            except IntegrityError:
                # Someone else took this step (the unique constraint): leave the ticket to them.
                log.info(
                    "ticket %s: escalation step %d already taken elsewhere",
                    ticket.reference,
                    escalation.step,
                )
                session.expire(ticket)
                break
            done.append(_escalated(ticket, escalation))
    for e in done:
        log.warning("escalated %s", e.line())
    return done


def _record(
    session: Session,
    ticket: Ticket,
    e: Escalation,
    settings: Settings,
    calendars: Mapping[str, Calendar],
    now: dt.datetime,
) -> None:
    session.add(
        EscalationEvent(
            ticket_id=ticket.id,
            target=e.target,
            step=e.step,
            kind=e.kind,
            reason=e.reason,
            notify=e.notify[:320],
            at=now,
        )
    )
    # The insert first: if the step is taken, nothing below is written.
    session.flush()
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            kind="escalation",
            old=str(ticket.escalation_level),
            new=str(e.step),
            reason=f"{e.target} {e.kind}: {e.reason}; notified {e.notify}",
            actor="escalation",
            at=now,
        )
    )
    ticket.escalation_level = e.step
    subject, body = render_notification(settings, ticket, e, calendars.get(ticket.calendar))
    session.add(
        OutboxRow(
            header_message_id=new_message_id(settings.gateway.gateway.mail_domain),
            ticket_id=ticket.id,
            kind=TEMPLATE,
            channel="email",
            recipient=e.notify.lower()[:320],
            subject=subject,
            body=body,
            in_reply_to=None,
            status="pending",
            status_reason="",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    session.flush()


def render_notification(
    settings: Settings, ticket: Ticket, e: Escalation, calendar: Calendar | None
) -> tuple[str, str]:
    """Subject and body of the notification: templates/escalation.<lang>.txt (staff read the
    default language, "en"), else the built-in text. The due time reads in the calendar's zone."""
    text = settings.templates.get(TEMPLATE, "en") or BUILTIN_TEMPLATE
    local = e.due_at.astimezone(calendar.zone) if calendar is not None else e.due_at
    values = {
        "reference": ticket.reference or f"#{ticket.id}",
        "subject": ticket.subject or "(no subject)",
        "severity": ticket.severity,
        "queue": ticket.queue,
        "account": ticket.account_id,
        "status": ticket.status,
        "target": e.target.replace("_", " "),
        "kind": e.kind,
        "step": str(e.step),
        "step_name": e.step_name,
        "notify": e.notify,
        "due": f"{local:%Y-%m-%d %H:%M %Z} ({e.due_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "reason": e.reason,
    }
    # safe_substitute: an admin's typo in a template must never lose an escalation.
    filled = string.Template(text).safe_substitute(values)
    head, _, body = filled.partition("\n")
    subject = " ".join(head.removeprefix("Subject:").split())[:250]
    return subject, body.lstrip("\n")


def _escalated(ticket: Ticket, e: Escalation) -> Escalated:
    return Escalated(
        ticket_id=ticket.id,
        reference=ticket.reference or f"#{ticket.id}",
        target=e.target,
        kind=e.kind,
        step=e.step,
        step_name=e.step_name,
        notify=e.notify,
        due_at=e.due_at,
        reason=e.reason,
    )


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]


def _utc(value: dt.datetime) -> dt.datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted
