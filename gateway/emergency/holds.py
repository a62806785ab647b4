"""The database side of emergency support: requests, holds, releases, incidents and links.

Owns what happens to a ticket once decide has judged an emergency request
(`gateway/emergency/rules.py`): `apply` runs inside persist's transaction and opens the held request
(a state of the request, not of the ticket: the ticket keeps its queue place and SLA clock and is
marked `emergency_pending`, issue 17 item 1), or acknowledges the emergency (the mark goes: top of
the queue, due times from now, the incident billed through `gateway/emergency/ledger.py`), or
links a ticket to an account's open emergency. The one place that sets or clears the mark.
`release_expired` is worker 0's periodic job (like escalation): a request nobody confirmed
within `hold_timeout_minutes` expires, its mark goes, the ticket stays where it was, with a note
and one message to the customer, never billed.

Locks in one order everywhere — the ticket row, then its request — so the release job and a
confirmation arriving at the same moment never deadlock, and exactly one of them wins (the
other finds the request no longer awaiting). Never decides anything: decide did.
"""

from __future__ import annotations

import dataclasses
import logging
import string
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gateway.config.loader import Settings
from gateway.emergency.ledger import bundle_balance, link_ticket, record_incident
from gateway.emergency.rules import (
    HOLD_REASON,
    REVIEW_TAG,
    EmergencyStep,
    Quote,
    hold_time,
    prepaid_note,
)
from gateway.message import Automated, Thread
from gateway.outbound.outbox import gate, new_message_id
from gateway.policy.calendars import Calendar
from gateway.policy.plans import Sla, due_times, earlier_due
from gateway.policy.routing import Route
from gateway.policy.sms import sms_gate
from gateway.storage.billing_tables import EmergencyRequest
from gateway.storage.models import OutboxRow, Ticket, TicketEvent
from gateway.storage.queries import PROMPT_KINDS, as_utc, opted_out

log = logging.getLogger(__name__)

ACTOR = "emergency"
# The mark of a ticket whose emergency request awaits confirmation, as events and views name it.
PENDING = "emergency pending"


class Decided(Protocol):
    """What this module reads of decide's `Decision`: written here as a protocol so the emergency
    wing never imports the stages (decide's `Decision` satisfies it as it is)."""

    @property
    def emergency_step(self) -> EmergencyStep | None: ...
    @property
    def hold_deadline(self) -> datetime | None: ...
    @property
    def jump_queue(self) -> bool: ...
    @property
    def queue(self) -> str: ...
    @property
    def route(self) -> Route | None: ...
    @property
    def sla(self) -> Sla | None: ...
    @property
    def first_response_due(self) -> datetime | None: ...
    @property
    def resolution_due(self) -> datetime | None: ...


def apply(
    session: Session,
    ticket: Ticket,
    decision: Decided,
    thread: Thread,
    now: datetime,
) -> tuple[tuple[str, str], ...]:
    """Record what decide's emergency step says for `ticket`; return extra template values for
    the replies (the incident and how it is billed; for a request to confirm the charge, what
    the account's prepaid incidents would pay)."""
    step = decision.emergency_step
    if step is None:
        return ()
    if step.outcome == "held":
        _open_request(session, ticket, step, decision, now)
        assert step.quote is not None  # a held request states its price
        left = bundle_balance(session, ticket.account_id)
        return (("prepaid", prepaid_note(left, step.quote)),)
    if step.outcome == "linked" and thread.ticket is not None:
        # Part of the incident, shown and never billed; not raised (issue 18 item 3).
        link_ticket(session, ticket, thread.ticket.id, now, step.reason)
        return ()
    if not step.acknowledged:
        return ()  # unavailable, still-held, already: the recorded reasons say it all
    assert step.evidence is not None
    evidence = step.evidence
    waiting = _awaiting_request(session, ticket.id)
    review = step.review
    quote = step.quote
    if step.outcome == "confirmed":
        # The request confirmed; the timeout job may have released it a moment ago (between
        # threading and this write): the customer's confirmation of the quote still stands.
        asked = waiting or _latest_request(session, ticket.id)
        if asked is None:
            return ()
        quote = _quote_of(asked)  # what the confirmation request stated
        review = asked.review
        evidence = dataclasses.replace(evidence, contact=asked.contact)  # who was asked
        waiting = asked
    assert quote is not None
    if waiting is not None:
        if waiting.status == "awaiting":
            waiting.status = "confirmed"
            waiting.resolved_at = now
            waiting.resolution = step.reason
        request = waiting
    else:
        request = _request(session, ticket, step, "accepted", now, None)
        request.resolved_at = now
    _acknowledge(session, ticket, decision, review, now, step.reason)
    recorded = record_incident(
        session, ticket=ticket, evidence=evidence, quote=quote, at=now, request=request
    )
    return (
        ("incident", recorded.incident),
        ("billing", recorded.billing),
        ("terms_version", quote.terms_version),
    )


def _open_request(
    session: Session, ticket: Ticket, step: EmergencyStep, decision: Decided, now: datetime
) -> None:
    if _awaiting_request(session, ticket.id) is not None:
        return  # exactly one open request (and one confirmation request) per hold
    # The ticket is not held: it keeps its place and its clock (a new ticket runs on the clock
    # of its classified severity), and carries the mark until the request ends.
    _request(session, ticket, step, "awaiting", now, decision.hold_deadline)
    ticket.emergency_pending = True
    _event(session, ticket, "emergency", "", PENDING, step.reason, now)


def _request(
    session: Session,
    ticket: Ticket,
    step: EmergencyStep,
    status: str,
    now: datetime,
    deadline: datetime | None,
) -> EmergencyRequest:
    evidence, quote, signal = step.evidence, step.quote, step.signal
    assert evidence is not None and quote is not None
    request = EmergencyRequest(
        ticket_id=ticket.id,
        account_id=ticket.account_id,
        status=status,
        channel=evidence.channel,
        signal=signal.text if signal else "",
        requested_at=evidence.at,
        deadline=deadline,
        reference=evidence.reference[:998],
        text=evidence.text,
        sender=evidence.sender[:320],
        contact=evidence.contact[:400],
        authenticated=step.authenticated,
        authentication=step.authentication,
        reason=step.reason,
        classified=step.classified[:64],
        review=step.review,
        terms_version=quote.terms_version[:64],
        currency=quote.currency,
        price_minor=quote.price_minor,
        surcharge_minor=quote.surcharge_minor,
        after_hours=quote.after_hours,
        after_hours_reason=quote.after_hours_reason,
        resolution="",
    )
    session.add(request)
    session.flush()
    return request


def _awaiting_request(session: Session, ticket_id: int) -> EmergencyRequest | None:
    return (
        session.execute(
            select(EmergencyRequest)
            .where(EmergencyRequest.ticket_id == ticket_id, EmergencyRequest.status == "awaiting")
            .with_for_update()
        )
        .scalars()
        .first()
    )


def _latest_request(session: Session, ticket_id: int) -> EmergencyRequest | None:
    return (
        session.execute(
            select(EmergencyRequest)
            .where(EmergencyRequest.ticket_id == ticket_id)
            .order_by(EmergencyRequest.id.desc())
        )
        .scalars()
        .first()
    )


def _quote_of(request: EmergencyRequest) -> Quote:
    return Quote(
        currency=request.currency,
        price_minor=request.price_minor,
        surcharge_minor=request.surcharge_minor,
        after_hours=request.after_hours,
        after_hours_reason=request.after_hours_reason,
        after_hours_rule="",
        terms_version=request.terms_version,
    )


def _acknowledge(
    session: Session, ticket: Ticket, decision: Decided, review: str, now: datetime, why: str
) -> None:
    """The ticket becomes an acknowledged emergency: its pending mark gone, first in the queue,
    at the top level (persist raised the severity), routed and timed as one from `now`."""
    was = PENDING if ticket.emergency_pending else HOLD_REASON if ticket.held else ""
    ticket.emergency_pending = False
    ticket.held = False  # a ticket held before issue 17 (migration 0008 moved open ones)
    ticket.hold_reason = ""
    ticket.emergency = True
    ticket.emergency_acknowledged = True
    if decision.jump_queue:
        ticket.jump_queue = True
        ticket.jump_reason = "acknowledged emergency"
    ticket.queue = decision.queue
    tags = list(ticket.tags or [])
    wanted = list(decision.route.tags) if decision.route else []
    if review:
        wanted.append(REVIEW_TAG)
    ticket.tags = tags + [t for t in dict.fromkeys(wanted) if t not in tags]
    if decision.route is not None and decision.route.rule:
        ticket.routing_rule = decision.route.rule
    if decision.sla is not None:
        ticket.calendar = decision.sla.calendar
        ticket.first_response_minutes = decision.sla.first_response_minutes
        ticket.resolution_minutes = decision.sla.resolution_minutes
    ticket.first_response_due = earlier_due(ticket.first_response_due, decision.first_response_due)
    ticket.resolution_due = earlier_due(ticket.resolution_due, decision.resolution_due)
    ticket.updated_at = now
    _event(session, ticket, "emergency", was, "acknowledged emergency", why, now)
    if review:
        _event(session, ticket, "review", "", REVIEW_TAG, review, now)


def _event(
    session: Session, ticket: Ticket, kind: str, old: str, new: str, reason: str, now: datetime
) -> None:
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            kind=kind,
            old=old[:64],
            new=new[:64],
            reason=reason,
            actor=ACTOR,
            at=now,
        )
    )


# ---- worker 0: holds nobody confirmed ------------------------------------------------------------


def release_expired(
    sessions: sessionmaker[Session],
    settings: Settings,
    calendars: Mapping[str, Calendar],
    now: datetime,
    company: str = "Support",
) -> list[str]:
    """Expire every awaiting emergency request whose deadline has passed at `now` (aware): the
    ticket loses its "emergency pending" mark and keeps its severity, queue and due times, gets a
    note, and the customer one message; no incident. Returns the references whose request
    expired (another instance may expire some instead)."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(UTC)  # compared and stored as UTC: SQLite keeps no offset
    with sessions() as session:
        due = list(
            session.execute(
                select(EmergencyRequest.ticket_id)
                .where(EmergencyRequest.status == "awaiting", EmergencyRequest.deadline <= now)
                .order_by(EmergencyRequest.deadline)
            ).scalars()
        )
    released: list[str] = []
    for ticket_id in dict.fromkeys(due):
        with sessions.begin() as session:
            ticket = session.execute(
                select(Ticket).where(Ticket.id == ticket_id).with_for_update(skip_locked=True)
            ).scalar_one_or_none()
            if ticket is None:
                continue  # a worker or another instance is busy with it; next run
            request = _awaiting_request(session, ticket_id)
            deadline = as_utc(request.deadline) if request is not None else None
            if request is None or deadline is None or deadline > now:
                continue  # confirmed meanwhile
            _release(session, ticket, request, settings, calendars, now, company)
            released.append(ticket.reference or f"#{ticket.id}")
    for reference in released:
        log.info("%s: emergency request expired, no confirmation of the charge in time", reference)
    return released


def _release(
    session: Session,
    ticket: Ticket,
    request: EmergencyRequest,
    settings: Settings,
    calendars: Mapping[str, Calendar],
    now: datetime,
    company: str,
) -> None:
    minutes = settings.emergency.hold_timeout_minutes
    why = (
        f"no confirmation of the emergency charge within {hold_time(minutes)}: the request "
        f"expired; the ticket stays where it was ({ticket.severity}, queue {ticket.queue}), not "
        "an emergency, not billed"
    )
    request.status = "expired"
    request.resolved_at = now
    request.resolution = why
    ticket.emergency_pending = False
    ticket.held = False
    ticket.hold_reason = ""
    ticket.updated_at = now
    # Only a ticket held before issue 17 has no clock yet: it starts now.
    if ticket.first_response_due is None and ticket.resolution_due is None:
        sla = Sla(
            ticket.severity,
            ticket.calendar,
            ticket.first_response_minutes,
            ticket.resolution_minutes,
            "",
        )
        due = due_times(sla, calendars, now)
        ticket.first_response_due = due.first_response
        ticket.resolution_due = due.resolution
    _event(session, ticket, "emergency", PENDING, "expired", why, now)
    _notify_released(session, ticket, settings, now, company, minutes)


def _notify_released(
    session: Session,
    ticket: Ticket,
    settings: Settings,
    now: datetime,
    company: str,
    minutes: int,
) -> None:
    """One message to whom the confirmation request went, through the same gates as every
    customer message (no machines, no own addresses, no opted-out phone)."""
    prompt = (
        session.execute(
            select(OutboxRow)
            .where(OutboxRow.ticket_id == ticket.id, OutboxRow.kind.in_(PROMPT_KINDS))
            .order_by(OutboxRow.id)
        )
        .scalars()
        .first()
    )
    if prompt is None:
        return
    recipient = prompt.recipient
    sms = prompt.channel == "sms"
    name = "sms-emergency-released" if sms else "emergency-released"
    human = Automated("human", "")
    g = settings.gateway
    if sms:
        why_not = sms_gate(recipient, human, opted_out(session, recipient))
    else:
        own = tuple(a.lower() for a in (*g.smtp.recipients, g.outbound.from_address) if a)
        domains = tuple(d.lower() for d in (*g.smtp.domains, g.gateway.mail_domain))
        why_not = gate(recipient, human, own, domains)
    text = settings.templates.get(name, ticket.language or "en")
    if text is None and why_not is None:
        why_not = f"template {name!r} does not exist"
    subject = body = ""
    if text is not None:
        values = {
            "reference": ticket.reference or "",
            "subject": ticket.subject or "(no subject)",
            "name": ticket.contact_name or "there",
            "company": company,
            "account": ticket.account_id,
            "plan": ticket.plan,
            "severity": ticket.severity,
            "hold_time": hold_time(minutes),
        }
        filled = string.Template(text).safe_substitute(values)
        head, _, rest = filled.partition("\n")
        subject = " ".join(head.removeprefix("Subject:").split())[:250]
        body = rest.lstrip("\n")
    session.add(
        OutboxRow(
            header_message_id=new_message_id(g.gateway.mail_domain),
            ticket_id=ticket.id,
            intake_id=None,
            kind=name,
            channel="sms" if sms else "email",
            recipient=recipient,
            subject=subject,
            body=body,
            # Threads under the confirmation request it answers.
            in_reply_to=None if sms else prompt.header_message_id,
            status="pending" if why_not is None else "suppressed",
            status_reason=why_not or "",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
