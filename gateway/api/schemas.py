"""The API's request and response bodies, as pydantic models: what /openapi.json documents.

Owns the wire shapes of /api/v1. A ticket is the spine's ticket JSON (`"schema": 1`,
gateway.ticket_json.ticket_json; fields are only ever added) plus what agents need on top:
computed SLA state, attachment and raw download links, history, links, billing. Never queries
the database (gateway/api/views.py fills these) and never changes a ticket.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["new", "open", "waiting", "resolved", "closed", "reopened"]
SettableStatus = Literal["open", "waiting", "resolved", "closed", "reopened"]
Resolution = Literal["solution", "workaround", "enhancement_request", "escalated_to_development"]
ReplyChannel = Literal["email", "sms"]

REASON_MAX = 2000


class Sla(BaseModel):
    calendar: str | None = Field(description="Calendar the clocks run on (calendars.toml).")
    first_response_minutes: int | None
    resolution_minutes: int | None
    first_response_due: datetime | None
    first_response_at: datetime | None = Field(description="When the first response went out.")
    resolution_due: datetime | None
    waiting_since: datetime | None = Field(
        description="Waiting on the customer since (the resolution clock is paused)."
    )
    escalation_level: int
    first_response_breached: bool = Field(
        description="No first response and its due time has passed."
    )
    resolution_breached: bool = Field(description="Open and its resolution due time has passed.")
    first_response_seconds_left: int | None = Field(
        description="Seconds until the first response is due (negative: overdue); null once "
        "answered or without a target."
    )


class TicketSummary(BaseModel):
    """One ticket as the queue lists it (the spine's ticket JSON, schema 1, plus `sla`)."""

    model_config = ConfigDict(extra="ignore")

    schema_: int = Field(alias="schema", serialization_alias="schema", description="Always 1.")
    reference: str = Field(examples=["T-000123"])
    status: Status
    severity: str
    jump_queue: bool
    jump_reason: str | None
    held: bool
    hold_reason: str | None
    channel: str
    account: str
    contact: str | None
    plan: str
    queue: str
    subject: str
    created_at: datetime
    updated_at: datetime
    first_response_due: datetime | None
    resolution_due: datetime | None
    message_count: int
    linked_from: str | None
    explanation: dict[str, Any]
    emergency: bool
    emergency_acknowledged: bool
    emergency_pending: bool = Field(
        default=False,
        description="An emergency request awaits the contact's confirmation of the charge; "
        "the ticket keeps its queue place and SLA clock meanwhile.",
    )
    routing_rule: str | None
    tags: list[str]
    assignee_hint: str | None
    sla: Sla
    position: int | None = Field(
        default=None, description="1-based place in the queue order of this listing."
    )


class TicketPage(BaseModel):
    tickets: list[TicketSummary]
    total: int = Field(description="Tickets matching the filters (all pages).")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")
    server_time: datetime = Field(
        description="When this answer was computed: poll again with updated_since set a few "
        "seconds before it (changes are identified by reference; repeats are harmless)."
    )


class Attachment(BaseModel):
    id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    stored: bool = Field(description="False: over the size cap, only its facts were kept.")
    download_url: str | None


class ParseDefectOut(BaseModel):
    kind: str = Field(examples=["charset-detected"])
    detail: str = Field(examples=["text/plain: us-ascii -> utf-8"])
    meaning: str


class MessageOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: int
    direction: str = Field(description="in: from the customer; out: our reply.")
    channel: str
    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    subject: str
    received_at: datetime
    message_id: str | None
    in_reply_to: str | None
    text: str
    automated: str
    raw_sha256: str
    raw_size: int
    raw_url: str
    attachments: list[Attachment]
    parse_defects: list[ParseDefectOut] = Field(
        default_factory=list,
        description="What parsing lost or altered in this message (kind, where, meaning); "
        "the raw message at raw_url has it all.",
    )


class DecisionOut(BaseModel):
    stage: str
    code: str
    text: str


class OutboxOut(BaseModel):
    id: int
    kind: str
    channel: str
    to: str
    subject: str
    status: str
    reason: str
    attempts: int
    created_at: datetime
    sent_at: datetime | None


class EventOut(BaseModel):
    kind: str
    old: str
    new: str
    reason: str
    actor: str
    at: datetime


class Links(BaseModel):
    merged_into: str | None = None
    duplicate_of: str | None = None
    merged_from: list[str] = Field(default_factory=list)
    duplicates: list[str] = Field(default_factory=list)


class TicketDetail(TicketSummary):
    """A ticket with its whole story."""

    messages: list[MessageOut]
    decisions: list[DecisionOut] = Field(description="Every recorded reason, per stage.")
    outbox: list[OutboxOut]
    events: list[EventOut] = Field(description="Status, severity, reopen, ... changes.")
    resolution: Resolution | None
    links: Links
    billing: dict[str, Any] | None = Field(
        description="Emergency billing for the ticket (gateway.emergency.ledger), null if none."
    )


# ---- requests -------------------------------------------------------------------------------


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: SettableStatus
    reason: str = Field(default="", max_length=REASON_MAX)
    resolution: Resolution | None = Field(
        default=None,
        description="Required with status resolved; allowed with closed; refused otherwise.",
    )


class FirstResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        default="", max_length=REASON_MAX, description="e.g. 'called the customer back'"
    )


class SeverityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: str = Field(
        min_length=1, max_length=64, description="A level of severity.toml.", examples=["low"]
    )
    reason: str = Field(
        min_length=1,
        max_length=REASON_MAX,
        description="Why: recorded, and the classifier learns from it.",
    )


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    into: str = Field(
        min_length=1,
        max_length=32,
        description="The ticket that stays open.",
        examples=["T-000001"],
    )
    reason: str = Field(default="", max_length=REASON_MAX)


class DuplicateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    of: str = Field(
        min_length=1, max_length=32, description="The original ticket.", examples=["T-000001"]
    )
    reason: str = Field(default="", max_length=REASON_MAX)


class ReplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=20000, description="Plain text to the customer.")
    channel: ReplyChannel | None = Field(
        default=None, description="Default: sms for SMS tickets, email otherwise."
    )
    status: Literal["open", "waiting"] | None = Field(
        default=None, description="Also set the status, e.g. waiting (on the customer)."
    )


class IncidentLinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emergency: str = Field(
        min_length=1,
        max_length=32,
        description="The emergency ticket whose incident this ticket is part of.",
        examples=["T-000001"],
    )
    reason: str = Field(min_length=1, max_length=REASON_MAX, description="Why: audited.")


class IncidentUnlinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=REASON_MAX, description="Why: audited.")


class ChangeResult(BaseModel):
    changed: bool = Field(description="False: the ticket already was so; nothing recorded.")
    ticket: TicketSummary


class ReplyResult(BaseModel):
    message: MessageOut
    outbox_id: int
    outbox_status: str = Field(description="pending: queued for the outbox sender.")
    ticket: TicketSummary


# ---- admin ----------------------------------------------------------------------------------


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str
    via: str
    action: str
    target: str
    before: dict[str, Any]
    after: dict[str, Any]
    reason: str


class AuditPage(BaseModel):
    entries: list[AuditEntryOut]
    next_cursor: str | None


class SpoolEntryOut(BaseModel):
    id: str
    channel: str
    received_at: datetime
    mail_from: str | None
    recipients: list[str]
    peer: str | None
    size: int
    attempts: int
    last_stage: str | None
    last_error: str | None


class QuarantineEntryOut(BaseModel):
    id: str
    channel: str
    received_at: datetime
    mail_from: str | None
    recipients: list[str]
    size: int
    attempts: int
    stage: str
    error: str
    quarantined_at: datetime


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=REASON_MAX)


class ReplayResult(BaseModel):
    replayed: list[str]
    missing: list[str]


class BillingExport(BaseModel):
    since: datetime
    until: datetime
    incidents: list[dict[str, Any]] = Field(description="One line per incident, oldest first.")
    totals: list[dict[str, Any]] = Field(description="Per currency: incidents, charged, net...")
