"""A voicemail is routed like the same words by email (issue 18 items 1 and 2, "Done when").

The call's first event (the keypress) opens the ticket before anyone knows what the caller
will say; the transcript, arriving later, raises it, and its routing, SLA and on-call
notification are decided again and applied. The gateway's own notes (the keypress, the
recording's receipt) are never classified. Every request is signed as Twilio signs it; the
instant is named (after hours: Saturday 03:00 in New York)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from gateway.storage.models import DecisionRecord, Message, OutboxRow, Ticket
from gateway.storage.queries import find_ticket
from gateway.ticket_json import ticket_json
from tests.helpers import AFTER_HOURS, Gateway, make_email
from tests.twilio.conftest import (
    GROWTH_PHONE,
    OUR_NUMBER,
    SID,
    AppServer,
    path_of,
    signed_post,
    twiml,
)

SYSTEM_DOWN = (
    "Hi, this is Dana from Acme Family Clinic. Our booking system has been down since eight, "
    "nobody can check patients in."
)


def _play_call(app: AppServer, call: str, digit: str, transcript: str) -> None:
    """A whole call as Twilio plays it: the call, the keypress, the recording, the transcript."""
    caller = {"CallSid": call, "AccountSid": SID, "From": GROWTH_PHONE, "To": OUR_NUMBER}
    status, body = signed_post(app.port, "/twilio/voice", caller)
    gather = twiml(body).find("Gather")
    assert status == 200 and gather is not None
    status, body = signed_post(
        app.port, path_of(gather.get("action", "")), {**caller, "Digits": digit}
    )
    record = twiml(body).find("Record")
    assert status == 200 and record is not None
    recording_url = f"https://api.twilio.com/Recordings/RE{call}"
    recording = {
        "CallSid": call,
        "AccountSid": SID,
        "RecordingSid": f"RE{call}",
        "RecordingUrl": recording_url,
        "RecordingDuration": "25",
        "RecordingStatus": "completed",
    }
    path = path_of(record.get("recordingStatusCallback", ""))
    assert signed_post(app.port, path, recording)[0] == 200
    transcription = {
        **caller,
        "RecordingSid": f"RE{call}",
        "RecordingUrl": recording_url,
        "TranscriptionSid": f"TR{call}",
        "TranscriptionText": transcript,
        "TranscriptionStatus": "completed",
    }
    path = path_of(record.get("transcribeCallback", ""))
    assert signed_post(app.port, path, transcription)[0] == 200


def _outcome(gw: Gateway, ticket: Ticket) -> dict[str, Any]:
    """What the support contract made of a ticket: where it waits, when, and who was told."""
    with gw.session() as session:
        found = find_ticket(session, ticket.reference or "")
        assert found is not None
        data = ticket_json(session, found, detail=True)
        notified = sorted(
            row.recipient
            for row in session.execute(
                select(OutboxRow).where(
                    OutboxRow.ticket_id == ticket.id, OutboxRow.kind == "notify"
                )
            ).scalars()
        )
    return {
        "severity": data["severity"],
        "queue": data["queue"],
        "routing_rule": data["routing_rule"],
        "first_response_due": data["first_response_due"],
        "first_response_minutes": data["sla"]["first_response_minutes"],
        "calendar": data["sla"]["calendar"],
        "notified": notified,
    }


def test_an_after_hours_system_down_voicemail_is_routed_timed_and_notified_like_the_email(
    app_and_gateway: tuple[AppServer, Gateway], pin_clock: Callable[[str], datetime]
) -> None:
    pin_clock(AFTER_HOURS)
    app, gw = app_and_gateway
    _play_call(app, "CA-down", "2", SYSTEM_DOWN)
    gw.drain()
    gw.ingest(
        make_email(
            subject="Booking system down",
            body=SYSTEM_DOWN,
            sender="dana@acme-clinic.example",
            message_id="<down@acme-clinic.example>",
        )
    )
    gw.drain()
    voicemail, mail = gw.tickets()
    assert (voicemail.channel, mail.channel) == ("twilio-voice", "smtp")

    by_email = _outcome(gw, mail)
    assert by_email["queue"] == "on-call" and by_email["notified"] == ["oncall@example.com"]
    assert _outcome(gw, voicemail) == by_email

    # The decision trail says how: the transcript raised the ticket, and what was applied.
    with gw.session() as session:
        codes = [
            (d.stage, d.code)
            for d in session.execute(
                select(DecisionRecord)
                .where(DecisionRecord.ticket_id == voicemail.id)
                .order_by(DecisionRecord.id)
            ).scalars()
        ]
    assert ("route", "raised") in codes


def test_the_gateways_own_notes_on_a_call_are_never_classified(
    app_and_gateway: tuple[AppServer, Gateway], pin_clock: Callable[[str], datetime]
) -> None:
    pin_clock(AFTER_HOURS)
    app, gw = app_and_gateway
    _play_call(app, "CA-calm", "2", "Could you send me last month's invoice again, please?")
    gw.drain()
    (ticket,) = gw.tickets()
    default = gw.settings.severity.default
    with gw.session() as session:
        messages = list(
            session.execute(
                select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id)
            ).scalars()
        )
        notes = [
            d.text
            for d in session.execute(
                select(DecisionRecord).where(
                    DecisionRecord.ticket_id == ticket.id, DecisionRecord.stage == "classify"
                )
            ).scalars()
        ]
    keypress, recording, transcript = messages
    assert "pressed 2" in keypress.text and "Recording: https://" in recording.text
    for note in (keypress, recording):
        # No rule and no model read our words: the default level, no hits, no vote.
        assert (note.verdict["severity"], note.verdict["hits"]) == (default, [])
        assert note.verdict.get("model_vote") is None
    assert sum(n.startswith("not classified: the gateway's note") for n in notes) == 2
    assert transcript.verdict["score"] != 0 or transcript.verdict["hits"]
    assert ticket.severity == default
