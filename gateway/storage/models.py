"""The ticket database schema as typed SQLAlchemy 2 models.

Owns tables, columns, constraints and indexes. The unique constraint on `intakes.dedup_key`
(for the first intake of a message) is what makes "exactly one ticket per message" hold across
redelivery, replay, several channels and several instances (DESIGN promise 2). Schema changes
go through an Alembic migration in `gateway/storage/migrations/versions/`, never create_all in
production paths.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from gateway.storage.base import Base, UTCDateTime


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str | None] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(32), default="new")
    severity: Mapped[str] = mapped_column(String(64))
    # Position of `severity` on the configured scale (0 = most severe): the queue sorts on it.
    severity_rank: Mapped[int] = mapped_column(Integer)
    jump_queue: Mapped[bool] = mapped_column(Boolean, default=False)
    jump_reason: Mapped[str] = mapped_column(Text, default="")
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    contact_email: Mapped[str | None] = mapped_column(String(320))
    contact_name: Mapped[str | None] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(128), default="support")
    subject: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str] = mapped_column(String(16), default="en")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_response_due: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution_due: Mapped[datetime | None] = mapped_column(UTCDateTime)
    linked_from_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    explanation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # -- policy (routing, SLA, escalation) --------------------------------------------------
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    # An emergency whose billing acknowledgement is recorded: first in the queue.
    emergency_acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    # An emergency request on this ticket awaits the contact's confirmation of the charge. A
    # state of the request, not a hold: the ticket keeps its queue place and its SLA clock
    # (issue 17 item 1). Set and cleared only by gateway/emergency/holds.py.
    emergency_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    routing_rule: Mapped[str] = mapped_column(String(128), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    assignee_hint: Mapped[str] = mapped_column(String(200), default="")
    calendar: Mapped[str] = mapped_column(String(64), default="")
    first_response_minutes: Mapped[int | None] = mapped_column(Integer)
    resolution_minutes: Mapped[int | None] = mapped_column(Integer)
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the ticket started waiting on the customer (its resolution clock is paused).
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_tickets_queue_order", "held", "jump_queue", "severity_rank"),)


class TicketPause(Base):
    """A span in which the ticket waited on the customer: its resolution clock did not run."""

    __tablename__ = "ticket_pauses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EscalationEvent(Base):
    """One escalation step taken for one ticket. Unique per (ticket, target, step): each step
    happens once, however often or on however many instances the scheduler runs."""

    __tablename__ = "escalations"
    __table_args__ = (UniqueConstraint("ticket_id", "target", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    target: Mapped[str] = mapped_column(String(32))  # first_response | resolution | activity
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # near | breach | linger
    reason: Mapped[str] = mapped_column(Text)
    notify: Mapped[str] = mapped_column(String(320), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class CustomerAccount(Base):
    """Accounts imported with `gateway customers import` (customers.toml serves small shops)."""

    __tablename__ = "customer_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    plan: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(16), default="en")
    domains: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CustomerContact(Base):
    __tablename__ = "customer_contacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    emergency_authorised: Mapped[bool] = mapped_column(Boolean, default=False)


class Intake(Base):
    """Every spool entry we processed and what became of it — tickets, duplicates, discards."""

    __tablename__ = "intakes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The spool entry id: processing the same entry twice (crash after commit) is a no-op.
    spool_id: Mapped[str] = mapped_column(String(64), unique=True)
    dedup_key: Mapped[str] = mapped_column(String(512), index=True)
    # Set only on the first intake of a dedup key; NULL on duplicates. The unique constraint on
    # it is the exactly-once guarantee.
    first_key: Mapped[str | None] = mapped_column(String(512), unique=True)
    outcome: Mapped[str] = mapped_column(
        String(16)
    )  # ticket|follow-up|duplicate|discard|reject|hold
    reason: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str] = mapped_column(String(32))
    sender: Mapped[str] = mapped_column(String(320), default="")
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("intakes.id"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    instance: Mapped[str] = mapped_column(String(64), default="")


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8), default="in")  # in | out
    channel: Mapped[str] = mapped_column(String(32))
    header_message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    in_reply_to: Mapped[str] = mapped_column(Text, default="")
    sender: Mapped[str] = mapped_column(String(320), default="")
    sender_name: Mapped[str] = mapped_column(String(320), default="")
    recipients: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    text: Mapped[str] = mapped_column(Text, default="")
    raw_sha256: Mapped[str] = mapped_column(String(64))
    raw_size: Mapped[int] = mapped_column(BigInteger)
    defects: Mapped[str] = mapped_column(Text, default="")
    automated: Mapped[str] = mapped_column(String(32), default="human")
    verdict: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AttachmentRecord(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    stored: Mapped[bool] = mapped_column(Boolean)  # False: over the cap, content not kept


class DecisionRecord(Base):
    """Why: one row per recorded reason of a stage for a message (DESIGN promise 4)."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    intake_id: Mapped[int] = mapped_column(ForeignKey("intakes.id"), index=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    code: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)


class OutboxRow(Base):
    """An automated message to send, delivered at least once with a stable Message-ID."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    header_message_id: Mapped[str] = mapped_column(String(998), unique=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    intake_id: Mapped[int | None] = mapped_column(ForeignKey("intakes.id"))
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16), default="email")
    recipient: Mapped[str] = mapped_column(String(320), index=True)
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    # pending | sending | sent | suppressed | failed
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TicketEvent(Base):
    """Audit trail: status and severity changes with who and why. Append-only."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # status | severity | reopen | ...
    old: Mapped[str] = mapped_column(String(64), default="")
    new: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class SeverityLabel(Base):
    """An agent's severity correction: a training label for the classifier."""

    __tablename__ = "severity_labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    level: Mapped[str] = mapped_column(String(64))
    previous: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class ChannelState(Base):
    """Channels' own bookkeeping (an IMAP mailbox's UIDVALIDITY and last UID), key -> value."""

    __tablename__ = "channel_state"
    __table_args__ = (UniqueConstraint("channel", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SmsOptOut(Base):
    """A phone number that texted STOP (Twilio / CTIA opt-out): no SMS goes to it until START.

    Written only by `persist` (the STOP message's own transaction); read by the outbox gate and,
    again, by the SMS sender just before sending (a reply queued before the STOP arrived)."""

    __tablename__ = "sms_opt_outs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    phone: Mapped[str] = mapped_column(String(32), unique=True)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=True)
    keyword: Mapped[str] = mapped_column(String(32), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


# Tables of later features live in their own modules (on the same Base, from gateway.storage.base,
# never importing this module back); importing them here registers them on Base.metadata, so
# Alembic and every session see one schema. Last, so the tables keep their order in the metadata.
from gateway.storage import agent_tables, billing_tables, forwarding_tables  # noqa: E402

# Forwarding's journal: every ticket insert and changing update writes a ForwardChange row.
forwarding_tables.journal_changes_of(Ticket)

__all__ = ["Base", "agent_tables", "billing_tables", "forwarding_tables"]
