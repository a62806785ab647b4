"""What the API shows: the queue listing and a ticket's whole story, read from the database.

Owns the filters and pagination of the queue listing (always in THE queue order,
`gateway.storage.queries.queue_order`), the computed SLA state (breached, seconds left), the
ticket detail (messages with attachment and raw links, decisions, outbox, events, resolution,
merge/duplicate links, billing) and safe download headers (content type and a
Content-Disposition filename that cannot traverse paths or inject headers). Never writes.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from gateway.api.auth import ApiError
from gateway.api.schemas import (
    Attachment,
    DecisionOut,
    EventOut,
    Links,
    MessageOut,
    OutboxOut,
    Sla,
    TicketDetail,
    TicketPage,
    TicketSummary,
)
from gateway.storage.admin import latest_resolution
from gateway.storage.agent_tables import TicketLink
from gateway.storage.models import (
    AttachmentRecord,
    DecisionRecord,
    Message,
    OutboxRow,
    Ticket,
    TicketEvent,
)
from gateway.storage.queries import OPEN_STATUSES, as_utc, find_ticket, queue_order
from gateway.ticket_json import parse_defects_json, ticket_json

API_PREFIX = "/api/v1"
MAX_PAGE = 500

# A ticket's billing, when gateway.emergency.ledger is installed: (session, ticket id) -> JSON or
# None.
BillingLookup = Callable[[Session, int], dict[str, Any] | None]


@dataclass(frozen=True)
class QueueFilters:
    """The listing's filters; an empty tuple or None means "any"."""

    queues: tuple[str, ...] = ()
    levels: tuple[str, ...] = ()
    plans: tuple[str, ...] = ()
    statuses: tuple[str, ...] = OPEN_STATUSES
    jump_queue: bool | None = None
    emergency: bool | None = None
    breached: bool | None = None
    held: bool | None = None
    updated_since: datetime | None = None


# ---- cursors --------------------------------------------------------------------------------


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The offset a cursor stands for; 422 for anything we did not hand out."""
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        text = ""
    match = re.fullmatch(r"o:(\d{1,9})", text)
    if match is None:
        raise ApiError(422, "invalid_request", "cursor is not one this API handed out")
    return int(match.group(1))


# ---- SLA ------------------------------------------------------------------------------------


def breached_clause(now: datetime) -> ColumnElement[bool]:
    """Open and past a due time: the first response not sent by its due time, or the
    resolution due time passed (the same rule as /metrics' gateway_sla_breached)."""
    return and_(
        Ticket.status.in_(OPEN_STATUSES),
        or_(
            and_(Ticket.first_response_at.is_(None), Ticket.first_response_due < now),
            Ticket.resolution_due < now,
        ),
    )


def sla_state(ticket: Ticket, now: datetime) -> Sla:
    open_ = ticket.status in OPEN_STATUSES
    first_due = as_utc(ticket.first_response_due)
    first_at = as_utc(ticket.first_response_at)
    resolution_due = as_utc(ticket.resolution_due)
    left = None
    if first_due is not None and first_at is None:
        left = int((first_due - now).total_seconds())
    return Sla(
        calendar=ticket.calendar or None,
        first_response_minutes=ticket.first_response_minutes,
        resolution_minutes=ticket.resolution_minutes,
        first_response_due=first_due,
        first_response_at=first_at,
        resolution_due=resolution_due,
        waiting_since=as_utc(ticket.waiting_since),
        escalation_level=ticket.escalation_level,
        first_response_breached=open_ and first_at is None and bool(first_due and first_due < now),
        resolution_breached=open_ and bool(resolution_due and resolution_due < now),
        first_response_seconds_left=left,
    )


# ---- listing --------------------------------------------------------------------------------


def summary(
    session: Session, ticket: Ticket, now: datetime, position: int | None = None
) -> TicketSummary:
    data = ticket_json(session, ticket)
    data["sla"] = sla_state(ticket, now)
    data["position"] = position
    return TicketSummary.model_validate(data)


def _where(filters: QueueFilters, now: datetime) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [Ticket.status.in_(filters.statuses)]
    if filters.queues:
        where.append(Ticket.queue.in_(filters.queues))
    if filters.levels:
        where.append(Ticket.severity.in_(filters.levels))
    if filters.plans:
        where.append(Ticket.plan.in_(filters.plans))
    for column, wanted in (
        (Ticket.jump_queue, filters.jump_queue),
        (Ticket.emergency, filters.emergency),
        (Ticket.held, filters.held),
    ):
        if wanted is not None:
            where.append(column.is_(True) if wanted else column.is_(False))
    if filters.breached is not None:
        clause = breached_clause(now)
        where.append(clause if filters.breached else ~clause)
    if filters.updated_since is not None:
        where.append(Ticket.updated_at >= filters.updated_since)
    return where


def list_tickets(
    session: Session, filters: QueueFilters, now: datetime, *, limit: int, cursor: str | None
) -> TicketPage:
    offset = decode_cursor(cursor)
    where = _where(filters, now)
    total = session.execute(select(func.count()).select_from(Ticket).where(*where)).scalar_one()
    rows = list(
        session.execute(
            select(Ticket).where(*where).order_by(*queue_order()).offset(offset).limit(limit)
        ).scalars()
    )
    nxt = offset + len(rows)
    return TicketPage(
        tickets=[summary(session, t, now, offset + i + 1) for i, t in enumerate(rows)],
        total=int(total),
        next_cursor=encode_cursor(nxt) if rows and nxt < total else None,
        server_time=now,
    )


# ---- one ticket -----------------------------------------------------------------------------


def ticket_or_404(session: Session, ref: str, *, for_update: bool = False) -> Ticket:
    """The ticket `ref` names (T-000123, or its number), or 404. `for_update` locks its row
    (PostgreSQL; SQLite's write transactions are exclusive anyway)."""
    ticket = find_ticket(session, ref) if _plausible_ref(ref) else None
    if ticket is None:
        raise ApiError(404, "not_found", f"no ticket {_printable(ref)}")
    if for_update:
        session.refresh(ticket, with_for_update=True)
    return ticket


def _plausible_ref(ref: str) -> bool:
    return bool(re.fullmatch(r"(?i)\s*(T-)?\d{1,12}\s*", ref))


def _printable(value: str) -> str:
    """For messages: no control characters, bounded."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in value[:40])
    return repr(cleaned + ("..." if len(value) > 40 else ""))


def message_url(reference: str, message_id: int) -> str:
    return f"{API_PREFIX}/tickets/{reference}/messages/{message_id}/raw"


def attachment_url(reference: str, attachment_id: int) -> str:
    return f"{API_PREFIX}/tickets/{reference}/attachments/{attachment_id}"


def message_out(
    message: Message, reference: str, attachments: Sequence[AttachmentRecord]
) -> MessageOut:
    return MessageOut.model_validate(
        {
            "id": message.id,
            "direction": message.direction,
            "channel": message.channel,
            "from": message.sender,
            "to": message.recipients,
            "subject": message.subject,
            "received_at": as_utc(message.received_at) or message.received_at,
            "message_id": message.header_message_id,
            "in_reply_to": message.in_reply_to or None,
            "text": message.text,
            "automated": message.automated,
            "raw_sha256": message.raw_sha256,
            "raw_size": message.raw_size,
            "raw_url": message_url(reference, message.id),
            "parse_defects": parse_defects_json(message.defects),
            "attachments": [
                Attachment(
                    id=a.id,
                    filename=a.filename,
                    content_type=a.content_type,
                    size=a.size,
                    sha256=a.sha256,
                    stored=a.stored,
                    download_url=attachment_url(reference, a.id) if a.stored else None,
                )
                for a in attachments
            ],
        }
    )


def _links(session: Session, ticket: Ticket) -> Links:
    links = Links()
    own = session.execute(
        select(TicketLink, Ticket.reference)
        .join(Ticket, Ticket.id == TicketLink.other_id)
        .where(TicketLink.ticket_id == ticket.id)
    ).first()
    if own is not None:
        link, other = own
        if link.kind == "merged_into":
            links.merged_into = other
        else:
            links.duplicate_of = other
    for link, other in session.execute(
        select(TicketLink, Ticket.reference)
        .join(Ticket, Ticket.id == TicketLink.ticket_id)
        .where(TicketLink.other_id == ticket.id)
        .order_by(TicketLink.id)
    ).all():
        (links.merged_from if link.kind == "merged_into" else links.duplicates).append(other or "")
    return links


def detail(
    session: Session, ticket: Ticket, now: datetime, billing: BillingLookup | None
) -> TicketDetail:
    reference = ticket.reference or ""
    base = summary(session, ticket, now).model_dump(by_alias=True)
    messages = list(
        session.execute(
            select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id)
        ).scalars()
    )
    by_message: dict[int, list[AttachmentRecord]] = {m.id: [] for m in messages}
    if messages:
        for att in session.execute(
            select(AttachmentRecord)
            .where(AttachmentRecord.message_id.in_(list(by_message)))
            .order_by(AttachmentRecord.id)
        ).scalars():
            by_message[att.message_id].append(att)
    decisions = session.execute(
        select(DecisionRecord)
        .where(DecisionRecord.ticket_id == ticket.id)
        .order_by(DecisionRecord.id)
    ).scalars()
    outbox = session.execute(
        select(OutboxRow).where(OutboxRow.ticket_id == ticket.id).order_by(OutboxRow.id)
    ).scalars()
    events = session.execute(
        select(TicketEvent).where(TicketEvent.ticket_id == ticket.id).order_by(TicketEvent.id)
    ).scalars()
    return TicketDetail.model_validate(
        {
            **base,
            "messages": [message_out(m, reference, by_message[m.id]) for m in messages],
            "decisions": [DecisionOut(stage=d.stage, code=d.code, text=d.text) for d in decisions],
            "outbox": [
                OutboxOut(
                    id=o.id,
                    kind=o.kind,
                    channel=o.channel,
                    to=o.recipient,
                    subject=o.subject,
                    status=o.status,
                    reason=o.status_reason,
                    attempts=o.attempts,
                    created_at=as_utc(o.created_at) or o.created_at,
                    sent_at=as_utc(o.sent_at),
                )
                for o in outbox
            ],
            "events": [
                EventOut(
                    kind=e.kind,
                    old=e.old,
                    new=e.new,
                    reason=e.reason,
                    actor=e.actor,
                    at=as_utc(e.at) or e.at,
                )
                for e in events
            ],
            "resolution": latest_resolution(session, ticket.id),
            "links": _links(session, ticket),
            "billing": billing(session, ticket.id) if billing is not None else None,
        }
    )


# ---- downloads ------------------------------------------------------------------------------

_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


def safe_content_type(declared: str) -> str:
    """The declared type if it is a plain `type/subtype` token, else application/octet-stream
    (a sender controls it: parameters, newlines and oddities never reach our headers)."""
    value = declared.split(";", 1)[0].strip().lower()
    return value if _MIME.fullmatch(value) else "application/octet-stream"


def _filename_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if category.startswith("C") or ch in '"<>:|?*;':  # controls, bidi overrides, shell-ish
        return "_"
    if category.startswith("Z"):  # odd spaces, line and paragraph separators
        return " "
    return ch


def safe_filename(name: str, fallback: str) -> str:
    """A file name safe to offer: the last path component only, no control characters, quotes,
    backslashes or leading dots, at most 150 characters; `fallback` if nothing is left."""
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(_filename_char(ch) for ch in name)
    name = name.strip().lstrip(".").strip()
    return name[:150] or fallback


def content_disposition(filename: str) -> str:
    """`attachment` (never inline: customer content must not render on our origin) with an
    ASCII fallback and the RFC 6266 / RFC 5987 UTF-8 form."""
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 else "_" for ch in filename)
    ascii_name = ascii_name.replace("\\", "_").replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def download_headers(filename: str) -> dict[str, str]:
    return {
        "Content-Disposition": content_disposition(filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, no-store",
    }


def raw_content_type(message: Message) -> tuple[str, str]:
    """(content type, file extension) of a stored raw message."""
    if message.direction == "out":
        return "text/plain; charset=utf-8", "txt"
    if message.channel.startswith("twilio"):
        return "application/json", "json"  # Twilio events are spooled as their form fields
    return "message/rfc822", "eml"
