"""Folding one ticket into another: merge (its messages move) or duplicate (it is closed as the
same request), each with the billing credit the billing rules give.

Owns the two agent actions and what they do, in the caller's transaction, audited:

* **merge** `source` into `target`: the source's messages (with their attachments), recorded
  reasons, outbox rows and intakes move to the target — so the customer's next reply to any of
  them threads to the target — the target takes the more severe level and keeps any queue jump or
  emergency of the source, and the source is closed with a `merged_into` link.
* **duplicate**: the source is closed with a `duplicate_of` link; its messages stay with it.

Either way `gateway.emergency.ledger.credit_incident(session, source_id, kind, ...)` is asked for a
credit (kind `merged` or `duplicate`): one request is billed once (billing's rules say whether the
folded ticket had a billed incident to credit). A ticket is folded
at most once, never into itself, and never into a ticket that was itself folded (the answer names
the ticket to use instead). Both rows are locked in id order (no deadlock between two agents
merging the same pair both ways). Never deletes anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.api import integrations
from gateway.privacy.audit import Actor, record_action
from gateway.storage.admin import AdminError, change_status
from gateway.storage.agent_tables import TicketLink
from gateway.storage.models import (
    DecisionRecord,
    Intake,
    Message,
    OutboxRow,
    Ticket,
    TicketEvent,
)

FoldKind = Literal["merged_into", "duplicate_of"]


def _link_of(session: Session, ticket_id: int) -> TicketLink | None:
    return session.execute(
        select(TicketLink).where(TicketLink.ticket_id == ticket_id)
    ).scalar_one_or_none()


def fold(
    session: Session,
    source: Ticket,
    target: Ticket,
    kind: FoldKind,
    *,
    actor: Actor,
    at: datetime,
    reason: str,
    levels: tuple[str, ...],
) -> integrations.Credit:
    """Merge `source` into `target`, or mark it a duplicate of `target` (see the module
    docstring). Returns what billing did about the credit. Raises AdminError `conflict` when
    the tickets cannot be folded so."""
    if source.id == target.id:
        raise AdminError("conflict", "a ticket cannot be merged into or duplicate itself")
    for ticket in sorted((source, target), key=lambda t: t.id):
        session.refresh(ticket, with_for_update=True)
    existing = _link_of(session, source.id)
    if existing is not None:
        other = session.get(Ticket, existing.other_id)
        raise AdminError(
            "conflict",
            f"{source.reference} was already {existing.kind.replace('_', ' ')} "
            f"{other.reference if other else existing.other_id}",
        )
    onward = _link_of(session, target.id)
    if onward is not None:
        other = session.get(Ticket, onward.other_id)
        raise AdminError(
            "conflict",
            f"{target.reference} was itself {onward.kind.replace('_', ' ')} "
            f"{other.reference if other else onward.other_id}; use that ticket",
        )
    verb = "merged into" if kind == "merged_into" else "duplicate of"
    note = f"{verb} {target.reference}" + (f": {reason}" if reason else "")
    before = {"status": source.status, "target": target.reference}
    moved = 0
    if kind == "merged_into":
        moved = _move_story(session, source, target, actor, at, levels)
    change_status(session, source, "closed", actor=actor, reason=note, at=at)
    session.add(
        TicketLink(
            ticket_id=source.id,
            other_id=target.id,
            kind=kind,
            reason=reason,
            actor=actor.name,
            at=at,
        )
    )
    target.updated_at = at
    record_action(
        session,
        actor,
        "ticket.merge" if kind == "merged_into" else "ticket.duplicate",
        source.reference or str(source.id),
        at=at,
        before=before,
        after={"link": kind, "target": target.reference, "messages_moved": moved},
        reason=reason,
    )
    return integrations.credit_for_fold(
        session,
        source.id,
        "merged" if kind == "merged_into" else "duplicate",
        actor=actor,
        at=at,
        reason=note,
    )


def _move_story(
    session: Session,
    source: Ticket,
    target: Ticket,
    actor: Actor,
    at: datetime,
    levels: tuple[str, ...],
) -> int:
    """Move the source's messages, reasons, outbox rows and intakes to the target; the target
    takes the more severe level, a queue jump and an emergency. Returns messages moved."""
    moved = session.execute(
        select(func.count()).select_from(Message).where(Message.ticket_id == source.id)
    ).scalar_one()
    session.execute(
        update(Message).where(Message.ticket_id == source.id).values(ticket_id=target.id)
    )
    for table in (DecisionRecord, OutboxRow, Intake):
        session.execute(
            update(table).where(table.ticket_id == source.id).values(ticket_id=target.id)
        )
    target.message_count += source.message_count
    source.message_count = 0
    if source.severity_rank < target.severity_rank and source.severity in levels:
        session.add(
            TicketEvent(
                ticket_id=target.id,
                kind="severity",
                old=target.severity,
                new=source.severity,
                reason=f"merged from {source.reference}",
                actor=actor.name,
                at=at,
            )
        )
        target.severity, target.severity_rank = source.severity, source.severity_rank
    if source.jump_queue and not target.jump_queue:
        target.jump_queue = True
        target.jump_reason = source.jump_reason or f"merged from {source.reference}"
    if source.emergency and not target.emergency:
        target.emergency = True
    if source.emergency_acknowledged and not target.emergency_acknowledged:
        target.emergency_acknowledged = True
    target.last_activity_at = at
    return int(moved or 0)
