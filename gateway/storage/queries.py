"""Reads the rest of the gateway needs: thread lookups, the queue, a ticket and its story.

Owns the one queue order (`queue_order`) used by the CLI and the API. Never writes, and imports
no business module (the ticket's JSON, billing included, is gateway/ticket_json.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, nulls_last, select
from sqlalchemy.orm import Session

from gateway.message import Prompt, TicketRef
from gateway.storage import ticket_reference
from gateway.storage.billing_tables import JOINABLE_REQUEST_STATUSES, EmergencyRequest
from gateway.storage.models import (
    Intake,
    Message,
    OutboxRow,
    SmsOptOut,
    Ticket,
)

OPEN_STATUSES = ("new", "open", "waiting", "reopened")


def _ref(ticket: Ticket, session: Session | None = None) -> TicketRef:
    pending = ticket.emergency_pending or ticket.held  # held: a ticket from before migration 0008
    awaiting, prompts = (
        _awaiting(session, ticket.id) if pending and session is not None else (False, ())
    )
    return TicketRef(
        id=ticket.id,
        reference=ticket.reference or "",
        account_id=ticket.account_id,
        status=ticket.status,
        closed_at=as_utc(ticket.closed_at),
        contact_email=ticket.contact_email,
        severity=ticket.severity,
        held=ticket.held,
        emergency=ticket.emergency,
        emergency_acknowledged=ticket.emergency_acknowledged,
        awaiting_acknowledgement=awaiting,
        prompts=prompts,
        queue=ticket.queue,
        routing_rule=ticket.routing_rule,
    )


# Outbox kinds of our "confirm the emergency charge" requests (templates/confirm-charge.*).
PROMPT_KINDS = ("confirm-charge", "sms-confirm-charge")


def _awaiting(session: Session, ticket_id: int) -> tuple[bool, tuple[Prompt, ...]]:
    """Is the held ticket awaiting the customer's acknowledgement, and which prompts did we send
    for it (only a reply to one of them confirms: gateway/emergency/rules.py)?"""
    waiting = session.execute(
        select(EmergencyRequest.id).where(
            EmergencyRequest.ticket_id == ticket_id, EmergencyRequest.status == "awaiting"
        )
    ).first()
    if waiting is None:
        return False, ()
    rows = session.execute(
        select(OutboxRow.channel, OutboxRow.header_message_id, OutboxRow.recipient).where(
            OutboxRow.ticket_id == ticket_id,
            OutboxRow.kind.in_(PROMPT_KINDS),
            OutboxRow.status.in_(("pending", "sending", "sent")),
        )
    ).all()
    return True, tuple(Prompt(c, m, r) for c, m, r in rows)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# The Message-IDs of a message's In-Reply-To and References looked up at most.
_MAX_THREAD_IDS = 50
_IN_CHUNK = 500  # Message-IDs per IN (...) of a batch's look-up


@dataclass
class MessageIdIndex:
    """Thread look-ups by Message-ID: the one rule for which ticket a list of Message-IDs
    (`reply_ids`, in the order they are looked up) continues. The newest stored message naming
    one of them, else our own sent mail named first in that order. Read for one message, or
    with one query a table for a whole batch (issue 20: not one or two a message) and then
    told of the messages the batch stores itself. A batch's only without savepoints: a message
    rolled back to its savepoint would stay here."""

    stored: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (message, ticket)
    sent: dict[str, int] = field(default_factory=dict)  # our own mail's id -> ticket
    # The tickets found, held so the session's identity map keeps them for `Session.get`.
    tickets: list[Ticket] = field(default_factory=list)

    def add(self, header_message_id: str | None, message_id: int, ticket_id: int | None) -> None:
        """A message stored with this Message-ID (the batch's own, as it is written)."""
        if header_message_id is None or ticket_id is None:
            return
        known = self.stored.get(header_message_id)
        if known is None or message_id > known[0]:
            self.stored[header_message_id] = (message_id, ticket_id)

    def ticket_id(self, message_ids: Sequence[str]) -> int | None:
        ids = message_ids[:_MAX_THREAD_IDS]
        found = [self.stored[i] for i in ids if i in self.stored]
        if found:
            return max(found)[1]
        return next((self.sent[i] for i in ids if i in self.sent), None)


def index_message_ids(session: Session, id_lists: Iterable[Sequence[str]]) -> MessageIdIndex:
    """Every stored message and sent mail with one of the Message-IDs a list looks up (each
    message's `reply_ids`), and their tickets."""
    wanted = sorted({i for ids in id_lists for i in ids[:_MAX_THREAD_IDS]})
    index = MessageIdIndex()
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        for header_id, message_id, ticket_id in session.execute(
            select(Message.header_message_id, Message.id, Message.ticket_id).where(
                Message.header_message_id.in_(chunk), Message.ticket_id.is_not(None)
            )
        ):
            index.add(header_id, message_id, ticket_id)
        for header_id, ticket_id in session.execute(
            select(OutboxRow.header_message_id, OutboxRow.ticket_id)
            .where(OutboxRow.header_message_id.in_(chunk), OutboxRow.ticket_id.is_not(None))
            .order_by(OutboxRow.id)
        ):
            if ticket_id is not None:  # never, by the WHERE: for the type checker
                index.sent.setdefault(header_id, ticket_id)
    ticket_ids = {t for _, t in index.stored.values()} | set(index.sent.values())
    if ticket_ids:
        index.tickets = list(
            session.execute(select(Ticket).where(Ticket.id.in_(sorted(ticket_ids)))).scalars()
        )
    return index


class SessionThreadLookup:
    """`ThreadLookup` over a database session: our stored messages and our sent mail; with an
    `index`, a batch's Message-IDs read once (`index_message_ids`)."""

    def __init__(self, session: Session, index: MessageIdIndex | None = None) -> None:
        self.session = session
        self.index = index

    def ticket_for_message_ids(self, message_ids: tuple[str, ...]) -> TicketRef | None:
        index = self.index
        if index is None:
            index = index_message_ids(self.session, [message_ids])
        ticket_id = index.ticket_id(message_ids)
        ticket = None if ticket_id is None else self.session.get(Ticket, ticket_id)
        return _ref(ticket, self.session) if ticket is not None else None

    def ticket_by_reference(self, reference: str) -> TicketRef | None:
        row = self.session.execute(
            select(Ticket).where(Ticket.reference == reference)
        ).scalar_one_or_none()
        return _ref(row, self.session) if row is not None else None

    def open_sms_ticket_for_phone(self, phone: str, since: datetime) -> TicketRef | None:
        row = self.session.execute(
            select(Ticket)
            .join(Message, Message.ticket_id == Ticket.id)
            .where(
                Message.channel == "twilio-sms",
                Message.sender == phone,
                Ticket.status.in_(OPEN_STATUSES),
                func.coalesce(Ticket.last_activity_at, Ticket.updated_at) >= since,
            )
            .order_by(Ticket.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        return _ref(row, self.session) if row is not None else None

    def open_emergency_for_account(self, account_id: str, since: datetime) -> TicketRef | None:
        row = self.session.execute(
            select(Ticket)
            .join(EmergencyRequest, EmergencyRequest.ticket_id == Ticket.id)
            .where(
                Ticket.account_id == account_id,
                Ticket.status.in_(OPEN_STATUSES),
                EmergencyRequest.status.in_(JOINABLE_REQUEST_STATUSES),
                EmergencyRequest.requested_at >= since.astimezone(UTC),
            )
            .order_by(EmergencyRequest.requested_at.desc(), Ticket.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        return _ref(row, self.session) if row is not None else None


def queue_order() -> list[ColumnElement[Any]]:
    """THE queue order, defined once: held tickets last; acknowledged emergencies first; then
    tickets that jump the queue (decide grants that only to plans that allow it); then severity
    (most severe first); then first-response due time, falling back to age."""
    return [
        Ticket.held.asc(),
        Ticket.emergency_acknowledged.desc(),
        Ticket.jump_queue.desc(),
        Ticket.severity_rank.asc(),
        nulls_last(func.coalesce(Ticket.first_response_due, Ticket.created_at).asc()),
        Ticket.id.asc(),
    ]


def list_queue(
    session: Session,
    *,
    statuses: tuple[str, ...] = OPEN_STATUSES,
    limit: int | None = 100,
    offset: int = 0,
) -> list[Ticket]:
    """Tickets in queue order; `limit=None` means every one."""
    stmt = select(Ticket).where(Ticket.status.in_(statuses)).order_by(*queue_order())
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.execute(stmt).scalars())


def count_queue(session: Session, *, statuses: tuple[str, ...] = OPEN_STATUSES) -> int:
    """How many tickets `list_queue` would return without a limit."""
    stmt = select(func.count()).select_from(Ticket).where(Ticket.status.in_(statuses))
    return int(session.execute(stmt).scalar_one())


def find_ticket(session: Session, reference: str) -> Ticket | None:
    ref = reference.strip().upper()
    if ref.isdigit():
        ref = ticket_reference.reference(int(ref))
    return session.execute(select(Ticket).where(Ticket.reference == ref)).scalar_one_or_none()


def already_ingested(session: Session, dedup_key: str) -> str | None:
    """How a message with this dedup key was recorded before, in words, or None if it is new.
    The dedup key is what makes persist record a message as a duplicate (`intakes.first_key`);
    `gateway explain` asks this so it never promises a new ticket for a message already in."""
    first = session.execute(
        select(Intake).where(Intake.first_key == dedup_key)
    ).scalar_one_or_none()
    if first is None:
        return None
    ticket = session.get(Ticket, first.ticket_id) if first.ticket_id else None
    if ticket is not None:
        return f"a duplicate of {ticket.reference} (intake {first.id}, {first.outcome})"
    return f"a duplicate of intake {first.id} ({first.outcome}, no ticket)"


def opted_out(session: Session, phone: str) -> bool:
    """Has this number texted STOP (and not START since)?"""
    row = session.execute(
        select(SmsOptOut.opted_out).where(SmsOptOut.phone == phone)
    ).scalar_one_or_none()
    return bool(row)


INTAKE_OUTCOMES = ("ticket", "follow-up", "duplicate", "discard", "reject", "hold")


def list_intakes(
    session: Session, *, outcome: str | None = None, limit: int | None = 100, offset: int = 0
) -> tuple[list[Intake], int]:
    """Intakes newest first (by arrival), only those with `outcome` when given, and how many
    there are in all; `limit=None` means every one. A rejected call or text exists only here
    (no ticket): this is how an operator sees them (`gateway intakes --outcome reject`)."""
    where = [Intake.outcome == outcome] if outcome else []
    stmt = select(Intake).where(*where).order_by(Intake.received_at.desc(), Intake.id.desc())
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    total = session.execute(select(func.count()).select_from(Intake).where(*where)).scalar_one()
    return list(session.execute(stmt).scalars()), int(total)


def intake_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Intake.outcome, func.count()).group_by(Intake.outcome)).all()
    return {outcome: int(n) for outcome, n in rows}


def outbox_backlog(session: Session, now: datetime) -> dict[str, dict[str, Any]]:
    """Per channel (email, sms, ...): rows not yet delivered (pending or being sent), and the
    oldest pending row's reason, attempts and age in seconds (`gateway status`)."""
    waiting = ("pending", "sending")
    out: dict[str, dict[str, Any]] = {
        channel: {"depth": 0, "oldest": None} for channel in ("email", "sms")
    }
    counts = session.execute(
        select(OutboxRow.channel, func.count())
        .where(OutboxRow.status.in_(waiting))
        .group_by(OutboxRow.channel)
    )
    for channel, depth in counts:
        out.setdefault(channel, {"depth": 0, "oldest": None})["depth"] = depth
    for channel, entry in out.items():
        if not entry["depth"]:
            continue
        row = session.execute(
            select(OutboxRow)
            .where(OutboxRow.channel == channel, OutboxRow.status.in_(waiting))
            .order_by(OutboxRow.created_at, OutboxRow.id)
            .limit(1)
        ).scalar_one()
        created = as_utc(row.created_at) or now
        entry["oldest"] = {
            "reason": row.status_reason or "not yet attempted",
            "attempts": row.attempts,
            "age_seconds": max(0, int((now - created).total_seconds())),
        }
    return out
