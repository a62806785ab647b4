"""Agents' and admins' changes to tickets, each recorded in the audit trail.

Owns status transitions and severity corrections (a correction is also a classifier label:
DESIGN promise 4 and the classifier issue's "learning from agents"). Never called from the
pipeline: only people change tickets this way.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.storage.models import Message, SeverityLabel, TicketEvent
from gateway.storage.queries import find_ticket


def set_status(session: Session, ref: str, status: str, *, actor: str, reason: str) -> str | None:
    ticket = find_ticket(session, ref)
    if ticket is None:
        return f"no ticket {ref}"
    now = datetime.now(UTC)
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            kind="status",
            old=ticket.status,
            new=status,
            reason=reason,
            actor=actor,
            at=now,
        )
    )
    ticket.status = status
    ticket.updated_at = now
    ticket.closed_at = now if status in ("resolved", "closed") else None
    session.commit()
    return None


def set_severity(
    session: Session, ref: str, level: str, levels: tuple[str, ...], *, actor: str, reason: str
) -> str | None:
    if level not in levels:
        return f"unknown level {level!r}; the scale is {', '.join(levels)}"
    if not reason.strip():
        return "a reason is required: it is recorded and the classifier learns from it"
    ticket = find_ticket(session, ref)
    if ticket is None:
        return f"no ticket {ref}"
    now = datetime.now(UTC)
    first = session.execute(
        select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id).limit(1)
    ).scalar_one_or_none()
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            kind="severity",
            old=ticket.severity,
            new=level,
            reason=reason,
            actor=actor,
            at=now,
        )
    )
    session.add(
        SeverityLabel(
            ticket_id=ticket.id,
            level=level,
            previous=ticket.severity,
            reason=reason,
            actor=actor,
            subject=ticket.subject,
            text=(first.text if first else "")[:8192],
            channel=ticket.channel,
            at=now,
        )
    )
    ticket.severity = level
    ticket.severity_rank = levels.index(level)
    ticket.updated_at = now
    session.commit()
    return None
