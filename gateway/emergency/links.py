"""Agents' incident links: a ticket made part of another ticket's emergency, or taken out of it.

Owns the agent's side of "one incident" (issue 18 item 3). The gateway links automatically only
by the rule in docs/emergency.md ("One incident": the same contact, or the emergency's ticket
named in the message; gateway/stages/thread.py); everything else is an agent's call, made here
through the API or the CLI and audited in the same transaction. A link is never billed and never
raises the linked ticket: it says "part of that incident", nothing more.

Never decides emergencies (gateway/emergency/rules.py), never bills (gateway/emergency/ledger.py),
never commits (the caller's transaction), never reads a clock (`at` is the caller's).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.emergency.ledger import link_ticket
from gateway.privacy.audit import Actor, record_action
from gateway.storage.admin import AdminError
from gateway.storage.billing_tables import (
    JOINABLE_REQUEST_STATUSES,
    EmergencyRequest,
    Incident,
    IncidentLink,
)
from gateway.storage.models import Ticket, TicketEvent


def link_to_incident(
    session: Session,
    ticket: Ticket,
    emergency: Ticket,
    *,
    actor: Actor,
    at: datetime,
    reason: str,
) -> bool:
    """Make `ticket` part of `emergency`'s incident. False when it already is (nothing
    recorded); AdminError when it cannot be."""
    if not reason.strip():
        raise AdminError("invalid", "linking a ticket to an incident needs a reason")
    if ticket.id == emergency.id:
        raise AdminError("invalid", f"{ticket.reference} cannot be linked to itself")
    asked = session.execute(
        select(EmergencyRequest.id).where(
            EmergencyRequest.ticket_id == emergency.id,
            EmergencyRequest.status.in_(JOINABLE_REQUEST_STATUSES),
        )
    ).first()
    if asked is None:
        raise AdminError(
            "invalid", f"{emergency.reference} is not an emergency: there is no incident to join"
        )
    own = session.execute(select(Incident.reference).where(Incident.ticket_id == ticket.id)).first()
    if own is not None:
        raise AdminError(
            "conflict",
            f"{ticket.reference} has its own incident {own[0]}: merge it into "
            f"{emergency.reference} instead (billing credits it)",
        )
    link = _link_of(session, ticket)
    if link is not None and link.emergency_ticket_id == emergency.id:
        return False
    if link is not None:
        other = session.get(Ticket, link.emergency_ticket_id)
        raise AdminError(
            "conflict",
            f"{ticket.reference} is linked to {other.reference if other else '?'}: unlink it first",
        )
    why = f"linked by {actor.label}: {reason}"
    link_ticket(session, ticket, emergency.id, at, why)
    ticket.linked_from_id = emergency.id
    ticket.updated_at = at
    _event(session, ticket, "", emergency.reference or "", why, actor, at)
    record_action(
        session,
        actor,
        "incident.link",
        ticket.reference or "",
        at=at,
        before={"linked_to": None},
        after={"linked_to": emergency.reference},
        reason=reason,
    )
    return True


def unlink_from_incident(
    session: Session, ticket: Ticket, *, actor: Actor, at: datetime, reason: str
) -> bool:
    """Take `ticket` out of the incident it is linked to. False when it is linked to none."""
    if not reason.strip():
        raise AdminError("invalid", "unlinking a ticket from an incident needs a reason")
    link = _link_of(session, ticket)
    if link is None:
        return False
    emergency = session.get(Ticket, link.emergency_ticket_id)
    was = emergency.reference if emergency else str(link.emergency_ticket_id)
    session.delete(link)
    if ticket.linked_from_id == link.emergency_ticket_id:
        ticket.linked_from_id = None
    ticket.updated_at = at
    _event(session, ticket, was or "", "", f"unlinked by {actor.label}: {reason}", actor, at)
    record_action(
        session,
        actor,
        "incident.unlink",
        ticket.reference or "",
        at=at,
        before={"linked_to": was, "linked_at": link.at.isoformat(), "why": link.reason},
        after={"linked_to": None},
        reason=reason,
    )
    return True


def _link_of(session: Session, ticket: Ticket) -> IncidentLink | None:
    return session.execute(
        select(IncidentLink).where(IncidentLink.ticket_id == ticket.id)
    ).scalar_one_or_none()


def _event(
    session: Session, ticket: Ticket, old: str, new: str, reason: str, actor: Actor, at: datetime
) -> None:
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            kind="incident-link",
            old=old[:64],
            new=new[:64],
            reason=reason,
            actor=actor.label[:128],
            at=at,
        )
    )
