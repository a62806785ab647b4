"""The ticket as JSON (`"schema": 1`: fields are only ever added), one shape for everyone.

Owns the versioned ticket JSON that `gateway tickets`/`gateway show`, the HTTP API and every
forwarding delivery carry. It sits above storage and the emergency ledger because a ticket's
detail includes its billing explained in plain words (`billing_views.ticket_billing`), which storage
must not import. Never writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.emergency.billing_views import ticket_billing
from gateway.message import PARSE_DEFECT_KINDS, decode_parse_defects
from gateway.storage.models import AttachmentRecord, DecisionRecord, Message, OutboxRow, Ticket
from gateway.storage.queries import as_utc

TICKET_SCHEMA = 1


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def parse_defects_json(column: str) -> list[dict[str, str]]:
    """A stored message's parse defects (issue 19): kind, where, and what it means."""
    return [
        {"kind": d.kind, "detail": d.detail, "meaning": PARSE_DEFECT_KINDS[d.kind]}
        for d in decode_parse_defects(column)
    ]


def ticket_json(session: Session, ticket: Ticket, *, detail: bool = False) -> dict[str, Any]:
    """The documented ticket JSON (docs/api.md "Ticket JSON"). Fields are only ever added."""
    out: dict[str, Any] = {
        "schema": TICKET_SCHEMA,
        "reference": ticket.reference,
        "status": ticket.status,
        "severity": ticket.severity,
        "jump_queue": ticket.jump_queue,
        "jump_reason": ticket.jump_reason or None,
        "held": ticket.held,
        "hold_reason": ticket.hold_reason or None,
        "channel": ticket.channel,
        "account": ticket.account_id,
        "contact": ticket.contact_email,
        "plan": ticket.plan,
        "queue": ticket.queue,
        "subject": ticket.subject,
        "created_at": _iso(ticket.created_at),
        "updated_at": _iso(ticket.updated_at),
        "first_response_due": _iso(ticket.first_response_due),
        "resolution_due": _iso(ticket.resolution_due),
        "message_count": ticket.message_count,
        "linked_from": None,
        "explanation": ticket.explanation,
        "emergency": ticket.emergency,
        "emergency_acknowledged": ticket.emergency_acknowledged,
        # An emergency request awaits the contact's confirmation; the ticket is not held by it.
        "emergency_pending": ticket.emergency_pending,
        "routing_rule": ticket.routing_rule or None,
        "tags": list(ticket.tags or []),
        "assignee_hint": ticket.assignee_hint or None,
        "sla": {
            "calendar": ticket.calendar or None,
            "first_response_minutes": ticket.first_response_minutes,
            "resolution_minutes": ticket.resolution_minutes,
            "first_response_at": _iso(ticket.first_response_at),
            "waiting_since": _iso(ticket.waiting_since),
            "escalation_level": ticket.escalation_level,
        },
    }
    # An accepted emergency the classifier rated far lower: an agent should look (emergency.py).
    out["emergency_review"] = "emergency-review" in out["tags"]
    if ticket.linked_from_id:
        linked = session.get(Ticket, ticket.linked_from_id)
        out["linked_from"] = linked.reference if linked else None
    if detail:
        # The emergency request, incident, ledger and link, each explained in plain words.
        out["billing"] = ticket_billing(session, ticket.id)
        messages = session.execute(
            select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id)
        ).scalars()
        out["messages"] = [
            {
                "id": m.id,
                "direction": m.direction,
                "channel": m.channel,
                "from": m.sender,
                "subject": m.subject,
                "received_at": _iso(m.received_at),
                "message_id": m.header_message_id,
                "text": m.text[:4000],
                "automated": m.automated,
                "raw_sha256": m.raw_sha256,
                # What the parse lost or altered (issue 19); the raw message has it all.
                "parse_defects": parse_defects_json(m.defects),
                "attachments": [
                    {
                        "filename": a.filename,
                        "content_type": a.content_type,
                        "size": a.size,
                        "sha256": a.sha256,
                        "stored": a.stored,
                    }
                    for a in session.execute(
                        select(AttachmentRecord).where(AttachmentRecord.message_id == m.id)
                    ).scalars()
                ],
            }
            for m in messages
        ]
        out["decisions"] = [
            {"stage": d.stage, "code": d.code, "text": d.text}
            for d in session.execute(
                select(DecisionRecord)
                .where(DecisionRecord.ticket_id == ticket.id)
                .order_by(DecisionRecord.id)
            ).scalars()
        ]
        out["outbox"] = [
            {"kind": o.kind, "to": o.recipient, "status": o.status, "reason": o.status_reason}
            for o in session.execute(
                select(OutboxRow).where(OutboxRow.ticket_id == ticket.id).order_by(OutboxRow.id)
            ).scalars()
        ]
    return out
