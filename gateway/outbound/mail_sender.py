"""Delivers outbox rows through the configured SMTP relay, at least once.

Owns claiming (a row is marked `sending` with a lease, `FOR UPDATE SKIP LOCKED` on PostgreSQL so
several instances never send the same row at once), delivery with exponential backoff, and the
headers every automated mail carries: the row's stable Message-ID (a resend after a crash is the
same message, recognisable downstream), `Auto-Submitted: auto-replied` (RFC 3834) and our loop
marker. A lease that expires (crash mid-send) returns the row to `pending`. A relay's 5xx is
final (`failed`, with its reply); a 4xx or a lost connection is retried. Never decides whom to
write to: `outbox.gate` did that when the row was written.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway import clock as business_clock
from gateway.config.gateway_schema import OutboundSection
from gateway.config.loader import secret
from gateway.intake.faults import crash_point
from gateway.message import OWN_LOOP_HEADER
from gateway.storage.models import OutboxRow

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)


def build_email(row: OutboxRow, outbound: OutboundSection, instance: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr((outbound.from_name, outbound.from_address))
    msg["To"] = row.recipient
    msg["Subject"] = row.subject
    msg["Message-ID"] = f"<{row.header_message_id}>"
    msg["Date"] = format_datetime(business_clock.now())
    if row.in_reply_to:
        msg["In-Reply-To"] = f"<{row.in_reply_to}>"
        msg["References"] = f"<{row.in_reply_to}>"
    if row.kind != "agent-reply":
        # An agent's reply (gateway/api/replies.py) is written by a person: RFC 3834 forbids
        # marking it automatic, and the customer's own filters must not treat it as a robot's.
        msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg[OWN_LOOP_HEADER] = instance
    msg.set_content(row.body)
    return msg


def claim(
    sessions: sessionmaker[Session],
    instance: str,
    now: datetime,
    limit: int = 20,
    channel: str = "email",  # "sms" rows are sent by gateway/outbound/twilio_sender.py
) -> list[int]:
    with sessions.begin() as session:
        # Rows whose lease ran out were being sent by a process that died: send them again.
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.status == "sending", OutboxRow.claimed_until < now)
            .values(status="pending", claimed_by=None)
        )
        ids = list(
            session.execute(
                select(OutboxRow.id)
                .where(
                    OutboxRow.status == "pending",
                    OutboxRow.next_attempt_at <= now,
                    OutboxRow.channel == channel,
                )
                .order_by(OutboxRow.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if ids:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(ids))
                .values(status="sending", claimed_by=instance, claimed_until=now + LEASE)
            )
        return ids


def send_due(sessions: sessionmaker[Session], outbound: OutboundSection, instance: str) -> int:
    """Send what is due; return how many were delivered."""
    if not outbound.enabled:
        return 0
    now = business_clock.now()
    ids = claim(sessions, instance, now)
    if not ids:
        return 0
    sent = 0
    with sessions() as session:
        rows = list(session.execute(select(OutboxRow).where(OutboxRow.id.in_(ids))).scalars())
    try:
        client = _connect(outbound)
    except (OSError, smtplib.SMTPException) as exc:
        _reschedule(sessions, rows, outbound, f"relay unavailable: {exc}")
        return 0
    try:
        for row in rows:
            try:
                email = build_email(row, outbound, instance)
            except (ValueError, TypeError) as exc:
                # Text that cannot be a header (e.g. a CR/LF the email package refuses) makes
                # this row a dead letter; raising here left it and every row claimed after it
                # `sending`, retried and stalled again at each lease (tests/hostile).
                _finish(sessions, row.id, "failed", f"cannot build the message: {exc}")
                continue
            try:
                client.send_message(email)
            except (OSError, smtplib.SMTPException) as exc:
                # Only a 5xx is final (tests/faults): a 450 at RCPT made a dead letter of a reply
                # the relay would have taken later, and a 554 was retried max_attempts times.
                if _permanent(exc):
                    _finish(sessions, row.id, "failed", f"relay refused: {exc}")
                else:
                    _reschedule(sessions, [row], outbound, f"{type(exc).__name__}: {exc}")
                continue
            crash_point("mid-outbox-send")
            _finish(sessions, row.id, "sent", "")
            sent += 1
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            pass
    return sent


def _permanent(exc: BaseException) -> bool:
    """A 5xx to MAIL, DATA or to every recipient (RFC 5321 4.2.1); 4xx and lost connections are
    temporary."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500


def _connect(outbound: OutboundSection) -> smtplib.SMTP:
    client = smtplib.SMTP(outbound.relay_host, outbound.relay_port, timeout=30)
    if outbound.starttls:
        client.starttls(context=ssl.create_default_context())
    if outbound.username:
        password = secret("relay-password", "GATEWAY_RELAY_PASSWORD") or ""
        client.login(outbound.username, password)
    return client


def _finish(sessions: sessionmaker[Session], row_id: int, status: str, reason: str) -> None:
    with sessions.begin() as session:
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.id == row_id)
            .values(
                status=status,
                status_reason=reason[:2000],
                sent_at=business_clock.now() if status == "sent" else None,
                claimed_by=None,
                claimed_until=None,
            )
        )


def _reschedule(
    sessions: sessionmaker[Session], rows: list[OutboxRow], outbound: OutboundSection, reason: str
) -> None:
    now = business_clock.now()
    with sessions.begin() as session:
        for row in rows:
            attempts = row.attempts + 1
            give_up = attempts >= outbound.max_attempts
            delay = min(outbound.max_backoff_seconds, 30 * 2 ** (attempts - 1))
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row.id, or_(OutboxRow.status == "sending"))
                .values(
                    status="failed" if give_up else "pending",
                    attempts=attempts,
                    status_reason=reason[:2000],
                    next_attempt_at=now + timedelta(seconds=delay),
                    claimed_by=None,
                    claimed_until=None,
                )
            )
    log.warning("outbox delivery deferred for %d message(s): %s", len(rows), reason)
