"""An agent's reply to the customer: composed, recorded on the ticket, queued in the outbox.

Owns what a reply is: to whom (the customer's latest address on that channel: their last
inbound mail's sender, else the ticket's contact; for SMS their number), how it threads (email:
In-Reply-To/References of the customer's last message, the ticket token `[#T-000123]` in the
subject, and our own stable Message-ID, which `thread` recognises when the customer answers), and
what it does to the ticket: an outbound message on it, the first-response clock stopped
(`admin.mark_first_response`), a new or reopened ticket open. All in the caller's transaction,
audited; the body is written to the blob store (so the raw download of an outbound message
works) before that transaction commits.

Delivery is the outbox's: email by `outbox_sender` (at least once, same Message-ID on a resend),
SMS by `twilio_outbound` (which checks the STOP list again just before sending). Never sends
anything itself and never writes to a machine, our own address, or a number that texted STOP.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.intake.blobs import BlobStore
from gateway.message import Automated
from gateway.outbound.outbox import gate, new_message_id
from gateway.policy.sms import sms_gate
from gateway.privacy.audit import Actor, record_action
from gateway.storage.admin import AdminError, mark_first_response
from gateway.storage.models import Message, OutboxRow, Ticket
from gateway.storage.queries import opted_out

EMAIL_CHANNELS = ("smtp", "lmtp", "pipe", "imap")
PHONE_CHANNELS = ("twilio-sms", "twilio-voice")
TOKEN = re.compile(r"\[#T-\d{6,}\]")
HUMAN = Automated("human", "written by an agent")


@dataclass(frozen=True)
class ReplySettings:
    """What a reply needs from the configuration."""

    mail_domain: str
    from_address: str
    own_addresses: tuple[str, ...]
    own_domains: tuple[str, ...]
    sms_from_number: str
    # Outbound SMS can actually leave (account SID, number and auth token configured).
    sms_configured: bool


@dataclass(frozen=True)
class Queued:
    message: Message
    outbox: OutboxRow


def default_channel(ticket: Ticket) -> str:
    return "sms" if ticket.channel == "twilio-sms" else "email"


def reply_subject(ticket: Ticket) -> str:
    """`Re: <subject> [#T-000123]`: the token threads the customer's answer to this ticket."""
    subject = " ".join((ticket.subject or "").split()) or "(no subject)"
    if not re.match(r"(?i)re:", subject):
        subject = f"Re: {subject}"
    if not TOKEN.search(subject):
        subject = f"{subject} [#{ticket.reference}]"
    return subject[:250]


def _last_inbound(session: Session, ticket: Ticket, channels: tuple[str, ...]) -> Message | None:
    return (
        session.execute(
            select(Message)
            .where(
                Message.ticket_id == ticket.id,
                Message.direction == "in",
                Message.channel.in_(channels),
            )
            .order_by(Message.id.desc())
            .limit(1)
        )
        .scalars()
        .first()
    )


def queue_reply(
    session: Session,
    ticket: Ticket,
    text: str,
    channel: str,
    *,
    actor: Actor,
    at: datetime,
    blobs: BlobStore,
    settings: ReplySettings,
) -> Queued:
    """Record and queue one reply (see the module docstring); raises AdminError `invalid` for
    an empty text and `conflict` when the customer cannot be written to on `channel`."""
    body = text.replace("\r\n", "\n").strip("\n")
    if not body.strip():
        raise AdminError("invalid", "the reply text is empty")
    if channel == "email":
        parent = _last_inbound(session, ticket, EMAIL_CHANNELS)
        recipient = (parent.sender if parent and "@" in parent.sender else "") or (
            ticket.contact_email or ""
        )
        why_not = gate(recipient.lower(), HUMAN, settings.own_addresses, settings.own_domains)
        if why_not:
            raise AdminError("conflict", f"cannot reply by email: {why_not}")
        subject = reply_subject(ticket)
        in_reply_to = parent.header_message_id if parent else None
        sender = settings.from_address
    elif channel == "sms":
        parent = _last_inbound(session, ticket, PHONE_CHANNELS)
        recipient = parent.sender if parent else ""
        why_not = sms_gate(recipient, HUMAN, opted_out(session, recipient))
        if why_not is None and not settings.sms_configured:
            why_not = (
                "outbound SMS is not configured ([webhooks] account_sid, from_number and the "
                "Twilio auth token)"
            )
        if why_not:
            raise AdminError("conflict", f"cannot reply by SMS: {why_not}")
        subject, in_reply_to, sender = "", None, settings.sms_from_number
    else:
        raise AdminError("invalid", f"unknown channel {channel!r}; email or sms")

    header_id = new_message_id(settings.mail_domain)
    raw = body.encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest()
    blobs.put(raw, digest)  # durable before the transaction that names it commits
    message = Message(
        ticket_id=ticket.id,
        direction="out",
        channel=channel,
        header_message_id=header_id,
        in_reply_to=in_reply_to or "",
        sender=sender[:320],
        sender_name="",
        recipients=recipient[:2000],
        subject=subject,
        sent_at=None,
        received_at=at,
        text=body,
        raw_sha256=digest,
        raw_size=len(raw),
        automated="human",
        verdict={},
    )
    outbox = OutboxRow(
        header_message_id=header_id,
        ticket_id=ticket.id,
        intake_id=None,
        kind="agent-reply",
        channel=channel,
        recipient=recipient[:320],
        subject=subject,
        body=body,
        in_reply_to=in_reply_to[:998] if in_reply_to else None,
        status="pending",
        status_reason="",
        attempts=0,
        next_attempt_at=at,
        created_at=at,
    )
    session.add_all([message, outbox])
    session.flush()
    mark_first_response(session, ticket, actor=actor, at=at, reason=f"reply by {channel}")
    ticket.updated_at = at
    ticket.last_activity_at = at
    # Names ids only: the audit log outlives erasure, so it never holds addresses or text.
    record_action(
        session,
        actor,
        "ticket.reply",
        ticket.reference or str(ticket.id),
        at=at,
        after={
            "channel": channel,
            "message": message.id,
            "outbox": outbox.id,
            "message_id": header_id,
        },
    )
    return Queued(message, outbox)
