"""Twilio's outbound side, run by the outbox thread of worker 0: SMS outbox rows delivered with
Twilio's REST client, and voicemail transcriptions that never came marked "unavailable".

Owns SMS delivery at least once (rows claimed with a lease exactly as mail rows are, in
`outbox_sender.claim`), the last opt-out check before a text leaves (a reply queued before the
STOP arrived is suppressed, never sent), and the transcription deadline
(`[webhooks] transcription_wait_minutes`). Never decides whom to write to: `persist` did.
The auth token comes only from `secret()`; the REST base URL may be rewritten (tests, edges).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from gateway import clock as business_clock
from gateway.config.loader import Settings, secret, sms_outbound_missing
from gateway.message import (
    TRANSCRIPTION_PENDING,
    TRANSCRIPTION_UNAVAILABLE,
    settle_transcription,
)
from gateway.outbound.mail_sender import _finish, _reschedule, claim
from gateway.storage.models import Message, OutboxRow, TicketEvent
from gateway.storage.queries import opted_out

log = logging.getLogger(__name__)

TWILIO_API = "https://api.twilio.com"
# Twilio error codes that will never succeed for this number: retrying only repeats them.
# 21610: the recipient replied STOP (Twilio's own opt-out list); 21211/21614: not a valid
# (mobile) number.
PERMANENT_CODES = frozenset({21610, 21211, 21614, 21408, 21612})


def auth_token() -> str | None:
    return secret("twilio-auth-token", "GATEWAY_TWILIO_AUTH_TOKEN")


class RebasedHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """Twilio's own HTTP client, sending to `base_url` instead of https://api.twilio.com."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if self.base_url and url.startswith(TWILIO_API):
            url = self.base_url + url[len(TWILIO_API) :]
        return super().request(method, url, *args, **kwargs)


def rest_client(settings: Settings, token: str) -> Client:
    hooks = settings.gateway.webhooks
    return Client(
        hooks.account_sid,
        token,
        http_client=RebasedHttpClient(hooks.rest_base_url or TWILIO_API),
    )


def send_due_sms(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Send the SMS rows that are due; return how many Twilio accepted."""
    hooks = settings.gateway.webhooks
    token = auth_token()
    if not (hooks.account_sid and hooks.from_number and token):
        _mark_waiting(sessions, settings)  # rows wait in the outbox, saying why
        return 0
    instance = settings.gateway.gateway.instance
    outbound = settings.gateway.outbound
    ids = claim(sessions, instance, business_clock.now(), channel="sms")
    if not ids:
        return 0
    client = rest_client(settings, token)
    sent = 0
    for row_id in ids:
        with sessions() as session:
            row = session.get(OutboxRow, row_id)
            if row is None:
                continue
            stopped = opted_out(session, row.recipient)
            session.expunge(row)
        if stopped:
            _finish(sessions, row.id, "suppressed", f"{row.recipient} opted out of SMS (STOP)")
            continue
        try:
            client.messages.create(to=row.recipient, from_=hooks.from_number, body=row.body)
        except TwilioRestException as exc:
            if exc.code in PERMANENT_CODES or (400 <= exc.status < 500 and exc.status != 429):
                _finish(sessions, row.id, "failed", f"Twilio refused: {exc.code} {exc.msg}")
            else:
                _reschedule(sessions, [row], outbound, f"Twilio {exc.status}: {exc.msg}")
            continue
        except (TwilioException, OSError) as exc:
            _reschedule(sessions, [row], outbound, f"Twilio unreachable: {exc}")
            continue
        _finish(sessions, row.id, "sent", "")
        sent += 1
    return sent


def _mark_waiting(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Outbound SMS is not configured: give the waiting rows that reason (`gateway status` and
    `show` print it) and log it once per row, so nothing waits silently (issue 17 item 9)."""
    reason = "outbound SMS is not configured: missing " + ", ".join(
        sms_outbound_missing(settings.gateway)
    )
    with sessions.begin() as session:
        result = session.execute(
            update(OutboxRow)
            .where(
                OutboxRow.channel == "sms",
                OutboxRow.status == "pending",
                OutboxRow.status_reason != reason,
            )
            .values(status_reason=reason)
        )
        marked = int(getattr(result, "rowcount", 0) or 0)
    if marked:
        log.warning("%d SMS reply(ies) waiting in the outbox: %s", marked, reason)


def expire_transcriptions(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Voicemails still waiting for a transcript after the configured wait: mark them
    "transcription unavailable" (the recording link stays). Returns how many."""
    wait = timedelta(minutes=settings.gateway.webhooks.transcription_wait_minutes)
    now = business_clock.now()
    with sessions.begin() as session:
        rows = list(
            session.execute(
                select(Message)
                .where(
                    Message.channel == "twilio-voice",
                    Message.header_message_id.like("recording.%"),
                    Message.text.contains(TRANSCRIPTION_PENDING),
                    Message.received_at < now - wait,
                )
                .limit(100)
            ).scalars()
        )
        minutes = f"{wait.total_seconds() / 60:g}"
        for message in rows:
            message.text = settle_transcription(
                message.text, f"{TRANSCRIPTION_UNAVAILABLE}: none arrived within {minutes} minutes."
            )
            if message.ticket_id is not None:
                session.add(
                    TicketEvent(
                        ticket_id=message.ticket_id,
                        kind="transcription",
                        old="pending",
                        new="unavailable",
                        reason=f"no transcription from Twilio within {minutes} minutes",
                        actor="gateway",
                        at=now,
                    )
                )
        return len(rows)


def run_once(sessions: sessionmaker[Session], settings: Settings) -> int:
    """One pass of both duties; never raises (the outbox thread must keep running)."""
    sent = 0
    try:
        sent = send_due_sms(sessions, settings)
    except Exception as exc:
        log.warning("SMS sender: %s: %s", type(exc).__name__, exc)
    try:
        expire_transcriptions(sessions, settings)
    except Exception as exc:
        log.warning("transcription deadline: %s: %s", type(exc).__name__, exc)
    return sent
