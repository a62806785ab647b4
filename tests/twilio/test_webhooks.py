"""Twilio SMS and voicemail: signed webhooks over real HTTP, plan-gated, exactly one ticket,
ticket references texted through Twilio's REST client (to a recording fake of its API)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway import clock
from gateway.outbound import twilio_sender as twilio_outbound
from gateway.storage.models import DecisionRecord, Message, SmsOptOut
from gateway.ticket_json import ticket_json
from tests.helpers import Gateway
from tests.twilio.conftest import (
    BASIC_PHONE,
    GROWTH_PHONE,
    OUR_NUMBER,
    PUBLIC,
    SID,
    TOKEN,
    AppServer,
    FakeTwilioApi,
    path_of,
    signed_post,
    sms_params,
    twiml,
)

App = tuple[AppServer, Gateway]


def spooled(app: AppServer) -> int:
    return app.spool.depth()


def send_sms(gw: Gateway) -> int:
    return twilio_outbound.send_due_sms(gw.worker.sessions, gw.box.current.settings)


def show(gw: Gateway, reference: str) -> dict[str, Any]:
    from gateway.storage.queries import find_ticket

    with gw.session() as session:
        ticket = find_ticket(session, reference)
        assert ticket is not None
        return ticket_json(session, ticket, detail=True)


# -- signatures -----------------------------------------------------------------------------


def test_forged_missing_and_wrong_url_signatures_get_403_and_nothing_is_spooled(
    app_and_gateway: App,
) -> None:
    app, _ = app_and_gateway
    params = sms_params("Printer is down", "SM403")
    for path in ("/twilio/sms", "/twilio/voice", "/twilio/voice/recording"):
        assert signed_post(app.port, path, params, token="not-the-token")[0] == 403
        assert signed_post(app.port, path, params, sign=False)[0] == 403
        assert signed_post(app.port, path, params, public="https://elsewhere.test")[0] == 403
    # Signed, then tampered with: the body no longer matches.
    tampered = dict(params, Body="Send me everything")
    from twilio.request_validator import RequestValidator

    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/sms", params)
    assert signed_post(app.port, "/twilio/sms", tampered, signature=signature)[0] == 403
    assert spooled(app) == 0
    assert app.channel.stats.forbidden == 10


def test_without_an_auth_token_every_webhook_is_refused(
    twilio_config: Callable[..., Path],
) -> None:
    app = AppServer(twilio_config(), token=None).start()
    try:
        status, _ = signed_post(app.port, "/twilio/sms", sms_params("hello", "SM1"))
        assert status == 403
        assert spooled(app) == 0
    finally:
        app.stop()


def test_unwritable_spool_answers_503_so_twilio_retries(app_and_gateway: App) -> None:
    app, _ = app_and_gateway
    tmp = app.spool.root / "tmp"
    shutil.rmtree(tmp)
    tmp.write_text("not a directory")  # every spool write now fails for real (ENOTDIR)
    try:
        status, _ = signed_post(app.port, "/twilio/sms", sms_params("hello", "SM503"))
        assert status == 503
    finally:
        tmp.unlink()
        tmp.mkdir()


# -- SMS ------------------------------------------------------------------------------------


def test_growth_sms_opens_a_ticket_and_texts_the_reference_back(
    app_and_gateway: App, fake_twilio: FakeTwilioApi
) -> None:
    app, gw = app_and_gateway
    status, body = signed_post(
        app.port,
        "/twilio/sms",
        sms_params(
            "Label printer offline\nsince 9am",
            "SM100",
            NumMedia="1",
            MediaUrl0="https://api.twilio.com/media/ME1",
            MediaContentType0="image/jpeg",
        ),
    )
    assert status == 200
    assert twiml(body).findtext("Message") == "Thank you, we received your message."
    gw.drain()
    (ticket,) = gw.tickets()
    assert ticket.channel == "twilio-sms"
    assert ticket.account_id == "acme-clinic"
    assert ticket.subject == "Label printer offline"
    data = show(gw, ticket.reference)
    assert "https://api.twilio.com/media/ME1" in data["messages"][0]["text"]
    assert send_sms(gw) == 1
    (text,) = fake_twilio.texts()
    assert text["To"] == GROWTH_PHONE and text["From"] == OUR_NUMBER
    assert ticket.reference in text["Body"]
    assert fake_twilio.requests[0][0] == f"/2010-04-01/Accounts/{SID}/Messages.json"
    (row,) = gw.outbox()
    assert (row.channel, row.status) == ("sms", "sent")


def test_replayed_sms_gets_the_same_answer_and_makes_one_ticket(
    twilio_config: Callable[..., Path], twilio_env: None, database_url: str
) -> None:
    config = twilio_config(storage__url=database_url)
    gw = Gateway(config)
    app = AppServer(config).start()
    try:
        params = sms_params("Scanner broken", "SM200")
        first = signed_post(app.port, "/twilio/sms", params)
        again = signed_post(app.port, "/twilio/sms", params)
        assert first == again and first[0] == 200
        gw.drain()
        assert len(gw.tickets()) == 1
        assert sorted(i.outcome for i in gw.intakes()) == ["duplicate", "ticket"]
    finally:
        app.stop()
        gw.close()


def test_basic_plan_sms_under_reject_gets_one_reply_per_window_and_no_ticket(
    app_and_gateway: App, fake_twilio: FakeTwilioApi
) -> None:
    app, gw = app_and_gateway
    for i in range(3):
        assert (
            signed_post(app.port, "/twilio/sms", sms_params(f"hi {i}", f"SM3{i}", BASIC_PHONE))[0]
            == 200
        )
    gw.drain()
    assert gw.tickets() == []
    assert [i.outcome for i in gw.intakes()] == ["reject"] * 3
    rows = gw.outbox()
    assert [r.status for r in rows] == ["pending", "suppressed", "suppressed"]
    assert send_sms(gw) == 1
    (text,) = fake_twilio.texts()
    assert text["To"] == BASIC_PHONE and "does not include sms" in text["Body"]


def test_stop_opts_out_and_no_further_sms_is_sent_until_start(
    app_and_gateway: App, fake_twilio: FakeTwilioApi
) -> None:
    app, gw = app_and_gateway
    signed_post(app.port, "/twilio/sms", sms_params("Printer down", "SM40"))
    gw.drain()  # ticket + reference SMS queued (not sent yet) ...
    status, body = signed_post(app.port, "/twilio/sms", sms_params("STOP", "SM41"))
    assert status == 200 and twiml(body).find("Message") is None
    gw.drain()
    assert send_sms(gw) == 0  # ... and the queued reply is suppressed, not sent
    assert fake_twilio.texts() == []
    signed_post(app.port, "/twilio/sms", sms_params("NEW another problem", "SM42"))
    gw.drain()
    assert send_sms(gw) == 0
    assert {r.status for r in gw.outbox()} == {"suppressed"}
    with gw.session() as session:
        row = session.execute(select(SmsOptOut)).scalar_one()
        assert (row.phone, row.opted_out) == (GROWTH_PHONE, True)
    signed_post(app.port, "/twilio/sms", sms_params("START", "SM43"))
    signed_post(app.port, "/twilio/sms", sms_params("NEW third problem", "SM44"))
    gw.drain()
    assert send_sms(gw) == 1


def test_sms_from_the_same_number_joins_its_open_ticket_unless_it_starts_with_new(
    app_and_gateway: App,
) -> None:
    app, gw = app_and_gateway
    signed_post(app.port, "/twilio/sms", sms_params("Printer down", "SM50"))
    gw.drain()
    signed_post(app.port, "/twilio/sms", sms_params("Still down, now smoking", "SM51"))
    gw.drain()
    assert len(gw.tickets()) == 1 and gw.tickets()[0].message_count == 2
    signed_post(app.port, "/twilio/sms", sms_params("new: the fax too", "SM52"))
    gw.drain()
    assert len(gw.tickets()) == 2
    # Outside the window, a text opens a new ticket.
    with gw.worker.sessions.begin() as session:
        from gateway.storage.models import Ticket

        old = clock.now() - timedelta(hours=30)
        session.execute(update(Ticket).values(last_activity_at=old, updated_at=old))
    signed_post(app.port, "/twilio/sms", sms_params("And the phones", "SM53"))
    gw.drain()
    assert len(gw.tickets()) == 3


# -- voice ----------------------------------------------------------------------------------


def call_params(caller: str, call: str = "CA1", **extra: str) -> dict[str, str]:
    return {"CallSid": call, "AccountSid": SID, "From": caller, "To": OUR_NUMBER, **extra}


def test_voice_twiml_follows_the_plan(app_and_gateway: App) -> None:
    app, gw = app_and_gateway
    # Basic plan (no voice, reject): told which channels it has, hung up, recorded as rejected.
    status, body = signed_post(app.port, "/twilio/voice", call_params(BASIC_PHONE, "CA-basic"))
    root = twiml(body)
    assert status == 200 and [e.tag for e in root] == ["Say", "Hangup"]
    assert "email" in (root.findtext("Say") or "")
    # Growth plan (voice and emergency): greeting, then the emergency choice.
    status, body = signed_post(app.port, "/twilio/voice", call_params(GROWTH_PHONE, "CA-g"))
    root = twiml(body)
    assert [e.tag for e in root] == ["Say", "Gather", "Say", "Record"]
    gather = root.find("Gather")
    assert gather is not None and gather.get("numDigits") == "1"
    assert path_of(gather.get("action", "")).startswith("/twilio/voice/gather")
    assert "billed per incident" in (gather.findtext("Say") or "")
    record = root.find("Record")
    assert record is not None
    assert record.get("transcribe") == "true"
    assert path_of(record.get("action", "")) == "/twilio/voice/done"  # never loops back
    assert path_of(record.get("recordingStatusCallback", "")).startswith("/twilio/voice/recording")
    assert path_of(record.get("transcribeCallback", "")).startswith("/twilio/voice/transcription")
    assert record.get("maxLength") == "120"
    # The keypress answer records, and the record's action says goodbye.
    status, body = signed_post(
        app.port, path_of(gather.get("action", "")), call_params(GROWTH_PHONE, "CA-g", Digits="2")
    )
    assert [e.tag for e in twiml(body)] == ["Say", "Record"]
    status, body = signed_post(app.port, "/twilio/voice/done", call_params(GROWTH_PHONE, "CA-g"))
    assert [e.tag for e in twiml(body)] == ["Say", "Hangup"]
    gw.drain()
    outcomes = sorted((i.dedup_key, i.outcome) for i in gw.intakes())
    assert outcomes == [("twilio:call:CA-basic", "reject"), ("twilio:gather:CA-g", "ticket")]


def _voicemail(
    app: AppServer, call: str, order: tuple[str, ...], transcript: str, duration: str = "35"
) -> None:
    caller = GROWTH_PHONE
    _, body = signed_post(app.port, "/twilio/voice", call_params(caller, call))
    gather = twiml(body).find("Gather")
    assert gather is not None
    _, body = signed_post(
        app.port, path_of(gather.get("action", "")), call_params(caller, call, Digits="1")
    )
    record = twiml(body).find("Record")
    assert record is not None
    rec_sid = "RE" + call
    common = {"CallSid": call, "AccountSid": SID, "RecordingSid": rec_sid}
    recording = {
        **common,
        "RecordingUrl": f"https://api.twilio.com/Recordings/{rec_sid}",
        "RecordingDuration": duration,
        "RecordingStatus": "completed",
    }
    transcription = {
        **common,
        "From": caller,
        "To": OUR_NUMBER,
        "TranscriptionSid": "TR" + call,
        "TranscriptionText": transcript,
        "TranscriptionStatus": "completed",
        "RecordingUrl": recording["RecordingUrl"],
    }
    for event in order:
        if event == "recording":
            path = path_of(record.get("recordingStatusCallback", ""))
            assert signed_post(app.port, path, recording)[0] == 200
        else:
            path = path_of(record.get("transcribeCallback", ""))
            assert signed_post(app.port, path, transcription)[0] == 200


@pytest.mark.parametrize(
    "order", [("recording", "transcription"), ("transcription", "recording")], ids=["rt", "tr"]
)
def test_voicemail_makes_one_ticket_whose_body_is_the_transcript_in_either_order(
    app_and_gateway: App, order: tuple[str, ...]
) -> None:
    app, gw = app_and_gateway
    transcript = "Our whole network is down and patients are waiting"
    _voicemail(app, "CA7", order, transcript)
    gw.drain()
    (ticket,) = gw.tickets()
    assert ticket.channel == "twilio-voice" and ticket.account_id == "acme-clinic"
    assert ticket.subject.startswith("Voicemail: Our whole network is down")
    data = show(gw, ticket.reference)
    texts = [m["text"] for m in data["messages"]]
    assert transcript in texts
    recording_text = next(t for t in texts if "Recording: https://" in t)
    assert "Transcription: received" in recording_text
    assert sorted(i.dedup_key for i in gw.intakes()) == [
        "twilio:gather:CA7",
        "twilio:recording:RECA7",
        "twilio:transcription:RECA7",
    ]


@pytest.mark.parametrize(
    "order", [("recording", "transcription"), ("transcription", "recording")], ids=["rt", "tr"]
)
def test_the_recordings_note_says_once_where_its_transcript_is_and_never_by_database_id(
    app_and_gateway: App, order: tuple[str, ...]
) -> None:
    app, gw = app_and_gateway
    transcript = "The card reader at the front desk rejects every card"
    _voicemail(app, "CA11", order, transcript)
    gw.drain()
    (ticket,) = gw.tickets()
    messages = show(gw, ticket.reference)["messages"]
    (said,) = [m for m in messages if m["text"] == transcript]
    (recording,) = [m for m in messages if "Recording: https://" in m["text"]]
    note = recording["text"]
    # Where the transcript is, as `gateway show` lists it: by the time it came in.
    assert (
        f"Transcription: received {said['received_at']}, as its own message on this ticket."
        in note
    )
    assert "when Twilio sends it" not in note and "pending" not in note  # no contradiction
    assert f"message {said['id']}" not in note  # a database id is no place in the ticket


def test_keypress_1_is_recorded_as_evidence_on_the_ticket(app_and_gateway: App) -> None:
    app, gw = app_and_gateway
    _voicemail(app, "CA8", ("recording",), "", duration="30")
    gw.drain()
    (ticket,) = gw.tickets()
    assert ticket.emergency and ticket.severity == "urgent"
    with gw.session() as session:
        evidence = session.execute(
            select(DecisionRecord).where(
                DecisionRecord.ticket_id == ticket.id, DecisionRecord.code == "emergency-keypress"
            )
        ).scalar_one()
    assert "pressed 1 on call CA8" in evidence.text
    assert "billed per incident" in evidence.text


def test_without_a_transcription_the_ticket_says_unavailable_and_keeps_the_recording(
    app_and_gateway: App,
) -> None:
    app, gw = app_and_gateway
    _voicemail(app, "CA9", ("recording",), "", duration="40")
    _voicemail(app, "CA10", ("recording",), "", duration="1")  # too short to transcribe
    gw.drain()
    with gw.worker.sessions.begin() as session:  # the wait is over for CA9's recording
        session.execute(
            update(Message)
            .where(Message.header_message_id.like("recording.%"))
            .values(received_at=clock.now() - timedelta(hours=1))
        )
    assert twilio_outbound.expire_transcriptions(gw.worker.sessions, gw.box.current.settings) == 1
    for ticket in gw.tickets():
        texts = "\n".join(m["text"] for m in show(gw, ticket.reference)["messages"])
        assert "Transcription: unavailable" in texts
        assert "Recording: https://api.twilio.com/Recordings/RE" in texts
        assert "pending" not in texts
