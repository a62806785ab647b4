"""Stage 7: the only stage that writes. One transaction per message.

Owns exactly-once (DESIGN promise 2): the intake row claims the message's dedup key under a
unique constraint before anything else is written, so a redelivery, a replay, the same mail by
SMTP and IMAP, or two instances racing all end as one ticket plus recorded duplicates. In the
same transaction: the ticket or follow-up, the message, attachment records, every recorded
reason, an emergency's hold, incident and ledger rows (`gateway/emergency/holds.py`), and outbox
rows (acknowledgements pass the outbox gate and the per-recipient limit
here, because the limit needs history). `record` runs inside the caller's transaction (the
pipeline gives each message of a batch its own SAVEPOINT); blobs are made durable *before* that
transaction commits. A crash anywhere before the commit leaves the spool entry to be processed
again, harmlessly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, func, insert, or_, select
from sqlalchemy.orm import Session

from classifiers.types import Verdict
from gateway.config.loader import Templates
from gateway.emergency import holds as emergency_holds
from gateway.intake.faults import crash_point
from gateway.message import (
    PARSE_DEFECT_TAG,
    TRANSCRIPTION_PENDING,
    TRANSCRIPTION_UNAVAILABLE,
    Automated,
    Customer,
    ParsedMessage,
    Thread,
    settle_transcription,
    transcription_received,
)
from gateway.outbound.outbox import Draft, gate, render
from gateway.policy.sms import sms_gate
from gateway.stages.decide import Accept, Decision, Discard, Hold, Reject, Reply
from gateway.storage.models import (
    AttachmentRecord,
    DecisionRecord,
    Intake,
    Message,
    OutboxRow,
    SmsOptOut,
    Ticket,
    TicketEvent,
    TicketPause,
)
from gateway.storage.queries import as_utc, opted_out


@dataclass(frozen=True)
class PersistContext:
    templates: Templates
    company: str
    mail_domain: str
    own_addresses: tuple[str, ...]
    own_domains: tuple[str, ...]
    per_recipient_limit: int
    per_recipient_window: timedelta
    levels: tuple[str, ...]
    instance: str


# The tables written by Core statements (no ORM unit of work): rows nothing reads back in the
# transaction that writes them.
_DECISIONS = cast(Table, DecisionRecord.__table__)
_OUTBOX = cast(Table, OutboxRow.__table__)

# Statements built once (building one costs about as much as running it): the intakes that
# already hold this spool entry or this dedup key, and automatic messages to one recipient
# since a moment.
_SEEN = select(Intake).where(
    or_(Intake.spool_id == bindparam("spool_id"), Intake.first_key == bindparam("key"))
)
_RECENT = (
    select(func.count())
    .select_from(OutboxRow)
    .where(
        OutboxRow.recipient == bindparam("recipient"),
        OutboxRow.created_at >= bindparam("since"),
        OutboxRow.status.in_(("pending", "sending", "sent")),
    )
)


@dataclass(frozen=True)
class Persisted:
    outcome: str  # ticket | follow-up | duplicate | discard | reject | hold | already-processed
    reference: str | None
    reason: str


def index_safe(value: str, limit: int = 998) -> str:
    """At most `limit` UTF-8 bytes (RFC 5322's line length), cut on a character boundary: an
    indexed column must fit PostgreSQL's btree entry limit (2,704 bytes), and 998 characters of
    non-ASCII text can be three times that. The raw message keeps the whole header."""
    return value.encode("utf-8")[:limit].decode("utf-8", "ignore")


def record(
    session: Session,
    message: ParsedMessage,
    customer: Customer,
    automated: Automated,
    thread: Thread,
    verdict: Verdict,
    decision: Decision,
    ctx: PersistContext,
    now: datetime,
) -> Persisted:
    # One query for both look-ups (this spool entry already recorded? this dedup key already
    # claimed?): each round trip through the ORM costs more than the query itself.
    seen = session.execute(_SEEN, {"spool_id": message.spool_id, "key": message.dedup_key})
    done = first = None
    for row in seen.scalars():
        if row.spool_id == message.spool_id:
            done = row
        if row.first_key == message.dedup_key:
            first = row
    if done is not None:
        # This very spool entry was committed before a crash kept it in the spool.
        return Persisted(
            "already-processed", None, f"spool entry already recorded as {done.outcome}"
        )
    intake = Intake(
        spool_id=message.spool_id,
        dedup_key=message.dedup_key,
        channel=message.channel,
        sender=message.sender[:320],
        received_at=message.received_at,
        processed_at=now,
        instance=ctx.instance,
    )
    if first is not None:
        first_ticket = session.get(Ticket, first.ticket_id) if first.ticket_id else None
        ticket_ref = first_ticket.reference if first_ticket else None
        intake.outcome = "duplicate"
        intake.duplicate_of = first.id
        intake.ticket_id = first.ticket_id
        intake.reason = (
            f"same message as intake {first.id} ({first.outcome}"
            + (f", {ticket_ref}" if ticket_ref else "")
            + f") by dedup key {message.dedup_key[:80]}"
        )
        session.add(intake)
        return Persisted("duplicate", ticket_ref, intake.reason)

    intake.first_key = message.dedup_key
    intake.outcome = "pending"
    session.add(intake)
    session.flush()  # claims the dedup key now; a racing twin fails here, not later

    crash_point("mid-transaction")
    outcome = decision.outcome
    ticket: Ticket | None = None
    kind: str
    if isinstance(outcome, Accept | Hold):
        ticket, kind = _ticket_for(session, message, customer, thread, verdict, decision, ctx, now)
        if message.parse_defects and PARSE_DEFECT_TAG not in (ticket.tags or []):
            # The queue page marks such a ticket: part of a message was lost or altered in
            # parsing (issue 19); `show` and the API list what, the raw message has it all.
            ticket.tags = [*(ticket.tags or []), PARSE_DEFECT_TAG]
        if isinstance(outcome, Hold):
            # The request is held, not the ticket: the emergency wing marks it (holds.apply).
            kind = "hold"
    elif isinstance(outcome, Discard):
        kind = "discard"
    elif isinstance(outcome, Reject):
        kind = "reject"
    else:  # pragma: no cover - the Outcome union is closed
        raise TypeError(f"unknown outcome {outcome!r}")

    stored = Message(
        ticket_id=ticket.id if ticket else None,
        direction="in",
        channel=message.channel,
        header_message_id=index_safe(message.message_id) if message.message_id else None,
        in_reply_to=" ".join(message.in_reply_to)[:2000],
        sender=message.sender[:320],
        sender_name=message.sender_name[:320],
        recipients=", ".join(message.recipients)[:2000],
        subject=message.subject,
        sent_at=message.date,
        received_at=message.received_at,
        text=message.text,
        raw_sha256=message.raw_sha256,
        raw_size=message.raw_size,
        # What the parse lost or altered first, so the cap never cuts those off.
        defects=",".join((*(d.encoded() for d in message.parse_defects), *message.defects))[:2000],
        automated=automated.kind,
        verdict=verdict.to_json(),
    )
    session.add(stored)
    session.flush()
    for att in message.attachments:
        session.add(
            AttachmentRecord(
                message_id=stored.id,
                filename=att.filename,
                content_type=att.content_type[:255],
                size=att.size,
                sha256=att.sha256,
                stored=att.content is not None,
            )
        )
    intake.outcome = kind
    intake.reason = outcome.reason[:4000]
    intake.ticket_id = ticket.id if ticket else None
    intake.message_id = stored.id
    if decision.reasons:
        # About six rows a message, written by one Core executemany: nothing reads them back in
        # this transaction, so the ORM's unit of work would only add a flush's bookkeeping per
        # row (issue 20 outcome 1). Same transaction, same savepoint as the rest.
        session.execute(
            insert(_DECISIONS),
            [
                {
                    "intake_id": intake.id,
                    "ticket_id": ticket.id if ticket else None,
                    "stage": reason.stage,
                    "code": reason.code[:64],
                    "text": reason.text[:4000],
                }
                for reason in decision.reasons
            ],
        )
    # -- Twilio: SMS opt-outs and the voicemail transcript (channels/twilio.py) ---------------
    if decision.sms_opt:
        _record_opt(session, message.sender, decision.sms_opt, now)
    if ticket is not None and message.channel == "twilio-voice":
        _voicemail_update(session, ticket, message, stored)
    # -- end Twilio ---------------------------------------------------------------------------
    # -- emergency support: the hold, the incident and its billing, or the link ----------------
    billed: tuple[tuple[str, str], ...] = ()
    if ticket is not None and decision.emergency_step is not None:
        billed = emergency_holds.apply(session, ticket, decision, thread, now)
    # -- end emergency ------------------------------------------------------------------------
    for reply in decision.replies:
        if billed and reply.template.startswith("emergency-"):
            reply = replace(reply, values=(*reply.values, *billed))
        _queue_reply(session, reply, message, customer, automated, ticket, intake, ctx, now)
    return Persisted(kind, ticket.reference if ticket else None, outcome.reason)


def _ticket_for(
    session: Session,
    message: ParsedMessage,
    customer: Customer,
    thread: Thread,
    verdict: Verdict,
    decision: Decision,
    ctx: PersistContext,
    now: datetime,
) -> tuple[Ticket, str]:
    if thread.kind in ("follow-up", "reopen") and thread.ticket is not None:
        ticket = session.get(Ticket, thread.ticket.id, with_for_update=True)
        if ticket is not None:
            ticket.message_count += 1
            ticket.updated_at = now
            if thread.kind == "reopen":
                session.add(
                    TicketEvent(
                        ticket_id=ticket.id,
                        kind="status",
                        old=ticket.status,
                        new="reopened",
                        reason=thread.reason,
                        actor="gateway",
                        at=now,
                    )
                )
                ticket.status = "reopened"
                ticket.closed_at = None
            rank = _rank(ctx.levels, decision.severity)
            ticket.last_activity_at = now
            if ticket.waiting_since is not None:
                # The customer answered: the resolution clock runs again.
                ticket.waiting_since = None
                pause = (
                    session.execute(
                        select(TicketPause).where(
                            TicketPause.ticket_id == ticket.id, TicketPause.ended_at.is_(None)
                        )
                    )
                    .scalars()
                    .first()
                )
                if pause is not None:
                    pause.ended_at = now
                if ticket.status == "waiting":
                    ticket.status = "open"
            if rank < ticket.severity_rank:
                # A follow-up may raise a ticket's severity (the customer says it got worse),
                # never lower it: an agent lowers severity, with a reason.
                step = decision.emergency_step
                acknowledged = step is not None and step.acknowledged  # emergency.py's top level
                session.add(
                    TicketEvent(
                        ticket_id=ticket.id,
                        kind="severity",
                        old=ticket.severity,
                        new=decision.severity,
                        reason=step.reason if step and acknowledged else verdict.explain(),
                        actor="emergency" if acknowledged else "classifier",
                        at=now,
                    )
                )
                ticket.severity = decision.severity
                ticket.severity_rank = rank
            if decision.emergency and not ticket.emergency:
                ticket.emergency = True  # a caller's keypress after the first event of a call
            if decision.jump_queue and not ticket.jump_queue:
                ticket.jump_queue = True
                ticket.jump_reason = verdict.explain()
            if decision.applies_routing:
                _reroute(session, ticket, decision, now)
            return ticket, "follow-up"
    ticket = Ticket(
        status="new",
        severity=decision.severity,
        severity_rank=_rank(ctx.levels, decision.severity),
        jump_queue=decision.jump_queue,
        jump_reason=verdict.explain() if decision.jump_queue else "",
        channel=message.channel,
        account_id=customer.account_id,
        contact_email=(customer.contact_email or message.sender or "")[:320] or None,
        contact_name=(customer.contact_name or message.sender_name or "")[:200] or None,
        plan=customer.plan,
        queue=decision.queue,
        subject=message.subject,
        language=customer.language,
        created_at=now,
        updated_at=now,
        message_count=1,
        linked_from_id=thread.ticket.id if thread.kind == "new-linked" and thread.ticket else None,
        emergency=decision.emergency,
        routing_rule=decision.route.rule if decision.route else "",
        tags=list(decision.route.tags) if decision.route else [],
        assignee_hint=decision.route.assignee if decision.route else "",
        calendar=decision.sla.calendar if decision.sla else "",
        first_response_minutes=decision.sla.first_response_minutes if decision.sla else None,
        resolution_minutes=decision.sla.resolution_minutes if decision.sla else None,
        first_response_due=decision.first_response_due,
        resolution_due=decision.resolution_due,
        last_activity_at=now,
        explanation={
            "classifier": verdict.to_json(),
            "reasons": [
                {"stage": r.stage, "code": r.code, "text": r.text} for r in decision.reasons
            ],
            "queue": decision.queue,
        },
    )
    session.add(ticket)
    session.flush()
    ticket.reference = f"T-{ticket.id:06d}"
    return ticket, "ticket"


def _reroute(session: Session, ticket: Ticket, decision: Decision, now: datetime) -> None:
    """A follow-up that raised its ticket (decide's `applies_routing`): the routing and SLA
    decided again are applied, so a voicemail's transcript reaches the queue, clock and on-call
    its words call for (issue 18 item 1). Due times only ever move earlier; tags are added,
    never removed. The change is recorded as a `routing` event."""
    route, sla = decision.route, decision.sla
    if route is None:
        return
    before = f"{ticket.queue} ({ticket.routing_rule or 'default'})"
    ticket.queue = decision.queue
    ticket.routing_rule = route.rule
    tags = list(ticket.tags or [])
    ticket.tags = tags + [t for t in dict.fromkeys(route.tags) if t not in tags]
    if route.assignee:
        ticket.assignee_hint = route.assignee
    if sla is not None:
        ticket.calendar = sla.calendar
        ticket.first_response_minutes = sla.first_response_minutes
        ticket.resolution_minutes = sla.resolution_minutes
    ticket.first_response_due = _earlier(ticket.first_response_due, decision.first_response_due)
    ticket.resolution_due = _earlier(ticket.resolution_due, decision.resolution_due)
    due = as_utc(ticket.first_response_due)
    session.add(
        TicketEvent(
            ticket_id=ticket.id,
            kind="routing",
            old=before[:64],
            new=f"{ticket.queue} ({route.rule or 'default'})"[:64],
            reason=f"raised to {decision.severity}: {route.reason}; first response due "
            f"{due.isoformat().replace('+00:00', 'Z') if due else 'none'}",
            actor="gateway",
            at=now,
        )
    )


def _earlier(kept: datetime | None, decided: datetime | None) -> datetime | None:
    kept = as_utc(kept)
    if kept is None or decided is None:
        return decided if kept is None else kept
    return min(kept, decided)


def _rank(levels: tuple[str, ...], level: str) -> int:
    return levels.index(level) if level in levels else len(levels)


def _queue_reply(
    session: Session,
    reply: Reply,
    message: ParsedMessage,
    customer: Customer,
    automated: Automated,
    ticket: Ticket | None,
    intake: Intake,
    ctx: PersistContext,
    now: datetime,
) -> None:
    template = reply.template
    recipient = (reply.to or message.sender).lower()
    # Twilio contacts are answered by SMS, to their number (staff notifications stay email).
    sms = message.channel.startswith("twilio") and not reply.internal
    if sms and ctx.templates.get(f"sms-{template}", customer.language) is not None:
        template = f"sms-{template}"
    if reply.internal:
        # Staff notifications: our own domain is expected; only a missing address stops them.
        why_not = None if "@" in recipient else "no notification address"
    elif sms:
        why_not = sms_gate(recipient, automated, opted_out(session, recipient))
    else:
        why_not = gate(recipient, automated, ctx.own_addresses, ctx.own_domains)
    draft: Draft | None = None
    if why_not is None:
        values = dict(reply.values)
        if ticket is not None:
            values.setdefault("queue", ticket.queue)
            values.setdefault("severity", ticket.severity)
            values.setdefault("account", ticket.account_id)
            values.setdefault("sender", message.sender)
        draft = render(
            ctx.templates,
            template,
            customer,
            message,
            ticket.reference if ticket and ticket.reference else "",
            ctx.company,
            ctx.mail_domain,
            values,
            recipient,
        )
        if draft is None:
            why_not = f"template {template!r} does not exist"
    if why_not is None:
        # The count reads only outbox rows, which are written straight away below (Core, not
        # the ORM), so nothing pending in the session could change it: no autoflush here.
        with session.no_autoflush:
            recent, told = _recent_to(session, recipient, template, sms, reply, ctx, now)
        if told:
            why_not = f"{recipient} was already told this plan excludes SMS in this window"
        if why_not is None and recent >= ctx.per_recipient_limit:
            why_not = (
                f"per-recipient limit: {recent} automatic messages to {recipient} "
                f"in the last {int(ctx.per_recipient_window.total_seconds() // 60)} minutes"
            )
    # One Core insert: the row is in the database at once, so the next reply's count sees it,
    # and no ORM object is left for a flush to walk (issue 20 outcome 1).
    session.execute(
        insert(_OUTBOX),
        {
            "header_message_id": draft.header_message_id
            if draft
            else f"suppressed-{intake.id}-{template}@{ctx.mail_domain}",
            "ticket_id": ticket.id if ticket else None,
            "intake_id": intake.id,
            "kind": template,
            "channel": "sms" if sms else "email",
            "recipient": recipient[:320] or "-",
            "subject": draft.subject if draft else "",
            "body": draft.body if draft else "",
            "in_reply_to": index_safe(draft.in_reply_to) if draft and draft.in_reply_to else None,
            "status": "pending" if why_not is None else "suppressed",
            "status_reason": why_not or "",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )


def _recent_to(
    session: Session,
    recipient: str,
    template: str,
    sms: bool,
    reply: Reply,
    ctx: PersistContext,
    now: datetime,
) -> tuple[int, int]:
    """Automatic messages to `recipient` in the per-recipient window, and (SMS "unentitled"
    only) how many of them already told this sender the plan excludes SMS."""
    since = now - ctx.per_recipient_window
    recent = session.execute(_RECENT, {"recipient": recipient, "since": since}).scalar_one()
    told = 0
    if sms and reply.template == "unentitled":
        # One polite "not on your plan" text per window, however often they write.
        told = session.execute(
            _RECENT.where(OutboxRow.kind == template),
            {"recipient": recipient, "since": since},
        ).scalar_one()
    return recent, told


# -- Twilio SMS and voicemail helpers (channels/twilio.py, gateway/stages/parse_twilio.py) -----


def _record_opt(session: Session, phone: str, opt: str, now: datetime) -> None:
    row = session.execute(select(SmsOptOut).where(SmsOptOut.phone == phone)).scalar_one_or_none()
    if row is None:
        row = SmsOptOut(phone=phone[:32])
        session.add(row)
    row.opted_out = opt == "out"
    row.keyword = "STOP" if opt == "out" else "START"
    row.updated_at = now


def _voicemail_update(
    session: Session, ticket: Ticket, message: ParsedMessage, stored: Message
) -> None:
    """One voicemail ticket whatever the order of its events: the transcript becomes the
    ticket's subject line and replaces "pending" on the recording's message; a recording that
    arrives after its transcript is stored as already transcribed."""
    event = message.header("x-twilio-event")
    siblings = list(
        session.execute(
            select(Message).where(Message.ticket_id == ticket.id, Message.id != stored.id)
        ).scalars()
    )
    transcribed = [m for m in siblings if (m.header_message_id or "").startswith("transcription.")]
    if event == "transcription" and not message.text.startswith(TRANSCRIPTION_UNAVAILABLE):
        ticket.subject = message.subject
        for sibling in siblings:
            if TRANSCRIPTION_PENDING in sibling.text:
                sibling.text = settle_transcription(
                    sibling.text, transcription_received(stored.received_at)
                )
    elif event == "recording" and transcribed and TRANSCRIPTION_PENDING in stored.text:
        stored.text = settle_transcription(
            stored.text, transcription_received(transcribed[0].received_at)
        )
