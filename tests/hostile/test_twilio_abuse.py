"""Twilio webhooks under abuse, over real HTTP: bodies over the limit get 413 before anything
parses them (with or without Content-Length, signed or not), and replayed voice callbacks —
keypress, recording, transcription — change nothing. (Forged, missing and wrong-URL signatures
and replayed SMS are specified in tests/twilio/test_webhooks.py.)"""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from channels.twilio import MAX_BODY_BYTES
from tests.helpers import Gateway
from tests.twilio.conftest import (
    GROWTH_PHONE,
    OUR_NUMBER,
    PUBLIC,
    SID,
    TOKEN,
    AppServer,
    signed_post,
    sms_params,
)


@pytest.fixture
def app(
    make_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[AppServer, Gateway]]:
    monkeypatch.setenv("GATEWAY_TWILIO_AUTH_TOKEN", TOKEN)
    config = make_config(webhooks__port=0, webhooks__public_url=PUBLIC)
    gw = Gateway(config)
    server = AppServer(config).start()
    yield server, gw
    server.stop()
    gw.close()


def post_raw(port: int, body: bytes, headers: dict[str, str], chunked: bool = False) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunked:
            conn.putrequest("POST", "/twilio/sms")
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for start in range(0, len(body), 16 * 1024):
                    chunk = body[start : start + 16 * 1024]
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before the end: read its answer
        else:
            conn.request("POST", "/twilio/sms", body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_webhook_body_over_the_limit_gets_413_and_nothing_is_spooled(
    app: tuple[AppServer, Gateway],
) -> None:
    server, _ = app
    params = sms_params("x" * (2 * MAX_BODY_BYTES), "SM-big")
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/sms", params)
    body = urllib.parse.urlencode(params).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature,
    }
    assert post_raw(server.port, body, headers) == 413  # validly signed, still too big
    assert post_raw(server.port, body, headers, chunked=True) == 413  # no Content-Length
    unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
    assert post_raw(server.port, b"a=b&" * (4 * MAX_BODY_BYTES), unsigned) == 413
    assert server.spool.depth() == 0
    # A request of ordinary size still goes through, on the same server.
    assert signed_post(server.port, "/twilio/sms", sms_params("Printer down", "SM-ok"))[0] == 200
    assert server.spool.depth() == 1


def test_replayed_voice_callbacks_answer_the_same_and_add_nothing(
    app: tuple[AppServer, Gateway],
) -> None:
    server, gw = app
    call = {"CallSid": "CA-replay", "AccountSid": SID, "From": GROWTH_PHONE, "To": OUR_NUMBER}
    recording = {
        **call,
        "RecordingSid": "RE-replay",
        "RecordingUrl": "https://api.twilio.com/Recordings/RE-replay",
        "RecordingDuration": "30",
        "RecordingStatus": "completed",
    }
    transcription = {
        **recording,
        "TranscriptionSid": "TR-replay",
        "TranscriptionText": "The network is down",
        "TranscriptionStatus": "completed",
    }
    requests = [
        (
            f"/twilio/voice/gather?caller={urllib.parse.quote(GROWTH_PHONE)}",
            {**call, "Digits": "1"},
        ),
        ("/twilio/voice/recording", recording),
        ("/twilio/voice/transcription", transcription),
    ]
    first = [signed_post(server.port, path, params) for path, params in requests]
    gw.drain()
    tickets, outbox = len(gw.tickets()), len(gw.outbox())
    replayed = [signed_post(server.port, path, params) for path, params in requests * 3]
    gw.drain()
    assert all(status == 200 for status, _ in first)
    assert replayed == first * 3
    assert len(gw.tickets()) == tickets == 1
    assert len(gw.outbox()) == outbox
    outcomes = [i.outcome for i in gw.intakes()]
    assert outcomes.count("duplicate") == 9
    assert len(outcomes) == 12


@pytest.fixture
def app_on(
    make_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> Iterator[tuple[AppServer, Gateway]]:
    monkeypatch.setenv("GATEWAY_TWILIO_AUTH_TOKEN", TOKEN)
    config = make_config(storage__url=database_url, webhooks__port=0, webhooks__public_url=PUBLIC)
    gw = Gateway(config)
    server = AppServer(config).start()
    yield server, gw
    server.stop()
    gw.close()


def test_signed_events_with_odd_values_still_become_tickets(
    app_on: tuple[AppServer, Gateway],
) -> None:
    """Twilio signs what it sends, but the worker must not trust its shape: a NUL, a count that
    is no number, a duration that is no integer end as tickets, never in the quarantine."""
    server, gw = app_on
    odd_sms = sms_params("Printer\x00 down", "SM-odd", NumMedia="many", MediaUrl0="https://m/1")
    assert signed_post(server.port, "/twilio/sms", odd_sms)[0] == 200
    call = {"CallSid": "CA-odd", "AccountSid": SID, "From": GROWTH_PHONE, "To": OUR_NUMBER}
    recording = {
        **call,
        "RecordingSid": "RE-odd",
        "RecordingUrl": "https://api.twilio.com/Recordings/RE-odd",
        "RecordingDuration": "30.5",
        "RecordingStatus": "completed",
    }
    assert signed_post(server.port, "/twilio/voice/recording", recording)[0] == 200
    transcription = {**recording, "TranscriptionText": "Net\x00work down", "RecordingDuration": ""}
    assert signed_post(server.port, "/twilio/voice/transcription", transcription)[0] == 200
    gw.drain()
    assert [(r.stage, r.error[:120]) for r in gw.spool.quarantined()] == []
    assert sorted(i.outcome for i in gw.intakes()) == ["follow-up", "ticket", "ticket"]
    assert all("\x00" not in t.subject for t in gw.tickets())
