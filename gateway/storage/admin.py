"""Agents' and admins' changes to tickets, each recorded in the audit trail.

Owns status transitions (with the resolution kind, and the pause of the resolution clock while
waiting on the customer), the first-response mark, and severity corrections (a correction is
also a classifier label: DESIGN promise 4 and the classifier issue's "learning from agents").
Each change is audited (`gateway.privacy.audit.record_action`) in the caller's transaction. The
`change_status`/`correct_severity`/`mark_first_response` functions never commit (the API commits
with its other writes); `set_status`/`set_severity` are the CLI's committing wrappers. Never
called from the pipeline: only people change tickets this way.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import clock as business_clock
from gateway.privacy.audit import Actor, record_action
from gateway.storage.models import Message, SeverityLabel, Ticket, TicketEvent, TicketPause
from gateway.storage.queries import as_utc, find_ticket

STATUSES = ("new", "open", "waiting", "resolved", "closed", "reopened")
# How a ticket was resolved (recorded with status "resolved", optionally with "closed").
RESOLUTIONS = ("solution", "workaround", "enhancement_request", "escalated_to_development")


class AdminError(ValueError):
    """A change that cannot be made as asked; `code` says how the caller should answer:
    `invalid` (the request is wrong) or `conflict` (the ticket's state does not allow it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _actor(actor: str | Actor) -> Actor:
    return actor if isinstance(actor, Actor) else Actor(actor, "cli")


def change_status(
    session: Session,
    ticket: Ticket,
    status: str,
    *,
    actor: Actor,
    reason: str,
    at: datetime,
    resolution: str | None = None,
) -> bool:
    """Move `ticket` to `status` in the caller's transaction, audited; False if it already was
    there (nothing recorded). Waiting on the customer pauses the resolution clock (a
    `TicketPause` and `waiting_since`), leaving "waiting" ends the pause. Raises AdminError."""
    if status not in STATUSES:
        known = ", ".join(STATUSES)
        raise AdminError("invalid", f"unknown status {status!r}; statuses are {known}")
    if resolution is not None and resolution not in RESOLUTIONS:
        raise AdminError(
            "invalid", f"unknown resolution {resolution!r}; one of {', '.join(RESOLUTIONS)}"
        )
    if resolution is not None and status not in ("resolved", "closed"):
        raise AdminError("invalid", "a resolution goes only with status resolved or closed")
    previous = _latest_resolution(session, ticket.id)
    if status == ticket.status and (resolution is None or resolution == previous):
        return False
    before = {"status": ticket.status, "resolution": previous}
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            kind="status",
            old=ticket.status,
            new=status,
            reason=reason,
            actor=actor.name,
            at=at,
        )
    )
    if resolution is not None:
        session.add(
            TicketEvent(
                ticket_id=ticket.id,
                kind="resolution",
                old=previous or "",
                new=resolution,
                reason=reason,
                actor=actor.name,
                at=at,
            )
        )
    if status == "waiting" and ticket.waiting_since is None:
        ticket.waiting_since = at
        session.add(TicketPause(ticket_id=ticket.id, started_at=at, ended_at=None))
    elif status != "waiting" and ticket.waiting_since is not None:
        _end_pause(session, ticket, at)
    ticket.status = status
    ticket.updated_at = at
    ticket.last_activity_at = at
    ticket.closed_at = at if status in ("resolved", "closed") else None
    record_action(
        session,
        actor,
        "ticket.status",
        ticket.reference or str(ticket.id),
        at=at,
        before=before,
        after={"status": status, "resolution": resolution or previous},
        reason=reason,
    )
    return True


def _end_pause(session: Session, ticket: Ticket, at: datetime) -> None:
    ticket.waiting_since = None
    open_pauses = select(TicketPause).where(
        TicketPause.ticket_id == ticket.id, TicketPause.ended_at.is_(None)
    )
    for pause in session.execute(open_pauses).scalars():
        pause.ended_at = max(at, as_utc(pause.started_at) or at)


def _latest_resolution(session: Session, ticket_id: int) -> str | None:
    return session.execute(
        select(TicketEvent.new)
        .where(TicketEvent.ticket_id == ticket_id, TicketEvent.kind == "resolution")
        .order_by(TicketEvent.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def latest_resolution(session: Session, ticket_id: int) -> str | None:
    """How the ticket was last resolved (one of RESOLUTIONS), or None."""
    return _latest_resolution(session, ticket_id)


def mark_first_response(
    session: Session, ticket: Ticket, *, actor: Actor, at: datetime, reason: str = ""
) -> bool:
    """Stop the first-response clock (a reply went out, or the customer was called): sets
    `first_response_at` once; a new or reopened ticket becomes open. False if already set."""
    if ticket.first_response_at is not None:
        return False
    before = {"first_response_at": None, "status": ticket.status}
    ticket.first_response_at = at
    ticket.updated_at = at
    ticket.last_activity_at = at
    if ticket.status in ("new", "reopened"):
        session.add(
            TicketEvent(
                ticket_id=ticket.id,
                kind="status",
                old=ticket.status,
                new="open",
                reason=reason or "first response sent",
                actor=actor.name,
                at=at,
            )
        )
        ticket.status = "open"
    record_action(
        session,
        actor,
        "ticket.first_response",
        ticket.reference or str(ticket.id),
        at=at,
        before=before,
        after={"first_response_at": at.isoformat(), "status": ticket.status},
        reason=reason,
    )
    return True


def set_status(
    session: Session,
    ref: str,
    status: str,
    *,
    actor: str | Actor,
    reason: str,
    resolution: str | None = None,
) -> str | None:
    """`gateway ticket set-status`: change and commit; an error message, or None."""
    ticket = find_ticket(session, ref)
    if ticket is None:
        return f"no ticket {ref}"
    try:
        change_status(
            session,
            ticket,
            status,
            actor=_actor(actor),
            reason=reason,
            at=business_clock.now(),
            resolution=resolution,
        )
    except AdminError as exc:
        session.rollback()
        return str(exc)
    session.commit()
    return None


def set_severity(
    session: Session,
    ref: str,
    level: str,
    levels: tuple[str, ...],
    *,
    actor: str | Actor,
    reason: str,
) -> str | None:
    """`gateway ticket set-severity`: correct and commit; an error message, or None."""
    ticket = find_ticket(session, ref)
    if ticket is None:
        return f"no ticket {ref}"
    try:
        correct_severity(
            session,
            ticket,
            level,
            levels,
            actor=_actor(actor),
            reason=reason,
            at=business_clock.now(),
        )
    except AdminError as exc:
        session.rollback()
        return str(exc)
    session.commit()
    return None


def correct_severity(
    session: Session,
    ticket: Ticket,
    level: str,
    levels: tuple[str, ...],
    *,
    actor: Actor,
    reason: str,
    at: datetime,
) -> bool:
    """An agent's severity correction, in the caller's transaction: a ticket event, a classifier
    label (`gateway train` learns from it) and an audit entry. Confirming the level a ticket
    already has is recorded too (a label that the classifier was right). Raises AdminError for a
    level off the scale or a blank reason."""
    if level not in levels:
        raise AdminError("invalid", f"unknown level {level!r}; the scale is {', '.join(levels)}")
    if not reason.strip():
        raise AdminError(
            "invalid", "a reason is required: it is recorded and the classifier learns from it"
        )
    now = at
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
            actor=actor.name,
            at=now,
        )
    )
    session.add(
        SeverityLabel(
            ticket_id=ticket.id,
            level=level,
            previous=ticket.severity,
            reason=reason,
            actor=actor.name,
            subject=ticket.subject,
            text=(first.text if first else "")[:8192],
            channel=ticket.channel,
            at=now,
        )
    )
    before = {"severity": ticket.severity}
    ticket.severity = level
    ticket.severity_rank = levels.index(level)
    ticket.updated_at = now
    record_action(
        session,
        actor,
        "ticket.severity",
        ticket.reference or str(ticket.id),
        at=now,
        before=before,
        after={"severity": level},
        reason=reason,
    )
    return True
