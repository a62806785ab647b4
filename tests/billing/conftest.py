"""Emergency-billing test kit: the gateway in-process with a frozen clock, messages of every
channel as the channels spool them, and readers for the ledger.

`Desk` runs each message through the real pipeline (`gateway.pipeline.process`, the very path a
worker takes) with `now` and the message's received time frozen at the instant a test names.
SMS and voice events are spooled exactly as `channels/twilio.py` spools them (the JSON payload,
the envelope and the channel key), so parse_twilio, threading and decide see what they see in
production. End-to-end tests through the real webhooks and relay live in test_holds.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from gateway.intake.spool import Envelope
from gateway.pipeline import process
from gateway.service.runtime import Runtime
from gateway.stages.persist import Persisted
from gateway.storage.billing_tables import (
    Bundle,
    EmergencyRequest,
    Incident,
    IncidentLink,
    LedgerEntry,
)
from gateway.storage.models import OutboxRow, Ticket
from gateway.storage.queries import find_ticket
from gateway.ticket_json import ticket_json
from tests.helpers import Gateway

NY = ZoneInfo("America/New_York")
# Tuesday 17 November 2026, 10:00 in New York: inside the sample business hours.
TUESDAY_10 = datetime(2026, 11, 17, 10, 0, tzinfo=NY)
PHRASE = "I acknowledge that emergency support is charged per incident"
DANA = "dana@acme-clinic.example"  # acme-clinic, growth plan, authorised for emergencies
DANA_PHONE = "+16175550100"
FRONT_DESK = "frontdesk@acme-clinic.example"  # acme-clinic, NOT authorised
SAM = "sam@bluebird.example"  # bluebird, basic plan (no emergency support)
OUR_NUMBER = "+16175550199"
TWILIO_ACCOUNT = "AC" + "0" * 32
# What the receiving MTA (a trusted authserv-id in config/emergency.toml) writes on top.
TRUSTED_PASS = "mx.example.com; dmarc=pass (p=reject dis=none) header.from=acme-clinic.example"


def email(
    subject: str = "[EMERGENCY] Server down",
    body: str = "Nobody can log in to the clinic system since 9am.",
    *,
    sender: str = DANA,
    message_id: str = "<e1@acme-clinic.example>",
    acknowledged: bool = True,
    authenticated: bool = True,
    **headers: str,
) -> bytes:
    """A mail as it reaches us; `authenticated`: our MTA's DMARC pass on top, `acknowledged`:
    the "Email Support" button's acknowledgement phrase in the body."""
    msg = EmailMessage()
    if authenticated:
        msg["Authentication-Results"] = TRUSTED_PASS
    msg["From"] = sender
    msg["To"] = "support@example.com"
    msg["Subject"] = subject
    msg["Date"] = "Tue, 17 Nov 2026 10:00:00 -0500"
    msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body + (f"\n\n{PHRASE}.\n" if acknowledged else "\n"))
    return msg.as_bytes()


class Desk:
    """The gateway in-process, one message at a time through the real pipeline, frozen clock."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._ids = itertools.count(1)

    @property
    def runtime(self) -> Runtime:
        return self.gw.box.current

    def _run(self, raw: bytes, envelope: Envelope, runtime: Runtime | None = None) -> Persisted:
        return process(
            raw,
            envelope,
            f"spool-{next(self._ids)}",
            runtime or self.runtime,
            self.gw.worker.sessions,
            self.gw.worker.blobs,
            now=envelope.received_at,
        )

    def mail(
        self,
        raw: bytes,
        at: datetime,
        *,
        to: str = "support@example.com",
        runtime: Runtime | None = None,
    ) -> Persisted:
        envelope = Envelope(
            channel="smtp", received_at=at, mail_from="bounce@relay.example", recipients=(to,)
        )
        return self._run(raw, envelope, runtime)

    def sms(self, body: str, at: datetime, *, sender: str = DANA_PHONE) -> Persisted:
        sid = f"SM{next(self._ids):032d}"
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "AccountSid": TWILIO_ACCOUNT,
            "From": sender,
            "To": OUR_NUMBER,
            "Body": body,
            "NumMedia": "0",
        }
        return self._twilio("twilio-sms", "sms", "/twilio/sms", params, {}, f"twilio:sms:{sid}", at)

    def call(
        self, call: str, at: datetime, *, digit: str = "1", caller: str = DANA_PHONE
    ) -> list[Persisted]:
        """A voicemail: the keypress, then the recording, then its transcription."""
        query = {"caller": caller}
        common = {"CallSid": call, "AccountSid": TWILIO_ACCOUNT}
        gather = {**common, "From": caller, "To": OUR_NUMBER, "Digits": digit}
        recording = {
            **common,
            "RecordingSid": f"RE{call}",
            "RecordingUrl": f"https://api.twilio.com/Recordings/RE{call}",
            "RecordingDuration": "30",
            "RecordingStatus": "completed",
        }
        transcript = {
            **common,
            "From": caller,
            "To": OUR_NUMBER,
            "RecordingSid": f"RE{call}",
            "TranscriptionText": "The server is still down and patients are waiting",
            "TranscriptionStatus": "completed",
        }
        return [
            self._twilio(
                "twilio-voice",
                "gather",
                "/twilio/voice/gather",
                gather,
                query,
                f"twilio:gather:{call}",
                at,
            ),
            self._twilio(
                "twilio-voice",
                "recording",
                "/twilio/voice/recording",
                recording,
                query,
                f"twilio:recording:RE{call}",
                at,
            ),
            self._twilio(
                "twilio-voice",
                "transcription",
                "/twilio/voice/transcription",
                transcript,
                query,
                f"twilio:transcription:RE{call}",
                at,
            ),
        ]

    def _twilio(
        self,
        channel: str,
        event: str,
        path: str,
        params: dict[str, str],
        query: dict[str, str],
        key: str,
        at: datetime,
    ) -> Persisted:
        # Exactly channels/twilio.py's spool payload and envelope.
        raw = json.dumps(
            {"v": 1, "event": event, "path": path, "query": query, "params": params},
            sort_keys=True,
            ensure_ascii=False,
        ).encode("utf-8")
        caller = params.get("From") or query.get("caller") or ""
        envelope = Envelope(
            channel=channel,
            received_at=at,
            mail_from=caller,
            recipients=(OUR_NUMBER,),
            channel_key=key,
            meta=(("twilio_event", event),),
        )
        return self._run(raw, envelope)

    # -- reading ---------------------------------------------------------------------------------

    def show(self, reference: str) -> dict[str, Any]:
        with self.gw.session() as session:
            ticket = find_ticket(session, reference)
            assert ticket is not None, reference
            return ticket_json(session, ticket, detail=True)

    def ticket(self, reference: str) -> Ticket:
        with self.gw.session() as session:
            ticket = find_ticket(session, reference)
            assert ticket is not None, reference
            return ticket

    def rows(self, table: Any) -> list[Any]:
        with self.gw.session() as session:
            return list(session.execute(select(table).order_by(table.id)).scalars())

    def incidents(self) -> list[Incident]:
        return self.rows(Incident)

    def ledger(self) -> list[LedgerEntry]:
        return self.rows(LedgerEntry)

    def requests(self) -> list[EmergencyRequest]:
        return self.rows(EmergencyRequest)

    def links(self) -> list[IncidentLink]:
        return self.rows(IncidentLink)

    def bundles(self) -> list[Bundle]:
        return self.rows(Bundle)

    def outbox(self, reference: str | None = None) -> list[OutboxRow]:
        rows: list[OutboxRow] = self.rows(OutboxRow)
        if reference is None:
            return rows
        ticket = self.ticket(reference)
        return [r for r in rows if r.ticket_id == ticket.id]


@pytest.fixture
def desk(make_config: Callable[..., Path], tmp_path: Path) -> Iterator[Desk]:
    """The gateway on SQLite (the rules are the same on both databases; the ledger tests run
    on both through `desk_on`)."""
    gw = Gateway(make_config(storage__url=f"sqlite:///{tmp_path / 'state' / 'gateway.db'}"))
    yield Desk(gw)
    gw.close()


@pytest.fixture
def desk_on(make_config: Callable[..., Path], database_url: str) -> Iterator[Desk]:
    """The gateway once on SQLite and once on PostgreSQL."""
    gw = Gateway(make_config(storage__url=database_url))
    yield Desk(gw)
    gw.close()
