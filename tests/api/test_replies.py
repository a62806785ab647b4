"""Replies to customers through the API: by email (through the outbox to a real SMTP sink,
threaded to the customer's message) and by SMS (Twilio's REST API, faked by a real HTTP server);
recorded on the ticket; the first-response clock stops. And once through a real `gateway run`."""

from __future__ import annotations

import email
import json
import urllib.parse
from collections.abc import Callable, Iterator
from email.message import Message as EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import clock
from gateway.config.gateway_schema import OutboundSection
from gateway.outbound.mail_sender import send_due
from gateway.outbound.twilio_sender import send_due_sms
from gateway.storage.models import Message, OutboxRow, SmsOptOut, Ticket
from tests.api.conftest import (
    WRITE_TOKEN,
    ApiServer,
    add_tokens,
    call,
)
from tests.helpers import CapturingRelay, DaemonProcess, make_email, wait_for
from tests.twilio.conftest import (
    GROWTH_PHONE,
    OUR_NUMBER,
    SID,
    TOKEN,
    FakeTwilioApi,
    sms_params,
)


def mail_with_id(relay: CapturingRelay, message_id: str) -> EmailMessage:
    for raw in relay.messages:
        parsed = email.message_from_bytes(raw)
        if parsed["Message-ID"] == f"<{message_id}>":
            return parsed
    raise AssertionError(f"no mail with Message-ID {message_id} among {len(relay.messages)}")


def test_an_email_reply_reaches_the_customer_threaded_and_stops_the_first_response_clock(
    api: ApiServer, relay: CapturingRelay
) -> None:
    before = api.get("/api/v1/tickets/T-000002").json()
    assert before["sla"]["first_response_at"] is None and before["status"] == "new"

    sent = api.post(
        "/api/v1/tickets/T-000002/replies",
        {"text": "We are on it: the database failed over.\nNext update in 30 minutes."},
    )
    assert sent.status == 201, sent.body
    result = sent.json()
    assert result["outbox_status"] == "pending" and result["message"]["direction"] == "out"
    ticket = result["ticket"]
    assert ticket["status"] == "open" and ticket["sla"]["first_response_at"] is not None
    our_id = result["message"]["message_id"]

    outbound = OutboundSection(relay_host="127.0.0.1", relay_port=relay.port)
    assert send_due(api.gateway.worker.sessions, outbound, "gw1") >= 1
    mail = mail_with_id(relay, our_id)
    assert mail["To"] == "dana@acme-clinic.example"
    assert mail["In-Reply-To"] == "<s2@x>" and mail["References"] == "<s2@x>"
    assert mail["Subject"] == "Re: Everything is down [#T-000002]"
    assert mail["Auto-Submitted"] is None  # a person wrote it (RFC 3834)
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes) and b"database failed over" in body

    shown = api.get("/api/v1/tickets/T-000002").json()
    assert [m["direction"] for m in shown["messages"]] == ["in", "out"]
    assert shown["messages"][1]["to"] == "dana@acme-clinic.example"
    assert [o["status"] for o in shown["outbox"] if o["kind"] == "agent-reply"] == ["sent"]
    with api.gateway.session() as session:
        row = session.execute(select(Ticket).where(Ticket.reference == "T-000002")).scalar_one()
        assert row.first_response_at is not None

    # The customer answers our reply: it threads to the same ticket by our Message-ID.
    api.ingest(
        make_email(
            subject="Re: Everything is down",
            body="Thanks, it works again.",
            message_id="<answer@acme-clinic.example>",
            In_Reply_To=f"<{our_id}>",
        )
    )
    refs = [t.reference for t in api.gateway.tickets()]
    assert refs == ["T-000001", "T-000002", "T-000003", "T-000004"]
    last = api.get("/api/v1/tickets/T-000002").json()["messages"][-1]
    assert last["text"].startswith("Thanks, it works again.")
    (entry,) = [e for e in audit_actions(api) if e[0] == "ticket.reply"]
    assert entry[1] == "api:agent"


def audit_actions(server: ApiServer) -> list[tuple[str, str, str]]:
    from gateway.storage.agent_tables import AuditEntry

    with server.gateway.session() as session:
        return [
            (e.action, e.actor, e.target)
            for e in session.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars()
        ]


def test_a_reply_that_cannot_be_sent_is_refused_and_leaves_no_trace(
    sqlite_api: ApiServer,
) -> None:
    url = "/api/v1/tickets/T-000001/replies"
    blank = sqlite_api.post(url, {"text": "  \n "})
    assert blank.status == 422 and blank.json()["error"]["code"] == "invalid_request"
    assert sqlite_api.post(url, {"text": "hi", "channel": "fax"}).status == 422
    assert sqlite_api.post(url, {"text": "hi", "cc": "x@y"}).status == 422  # unknown field
    no_sms = sqlite_api.post(url, {"text": "hi", "channel": "sms"})
    assert no_sms.status == 409 and "SMS" in no_sms.json()["error"]["message"]
    with sqlite_api.gateway.session() as session:
        session.execute(
            Ticket.__table__.update()
            .where(Ticket.reference == "T-000003")
            .values(contact_email="support@example.com")
        )
        session.execute(
            Message.__table__.update()
            .where(Message.ticket_id == 3)
            .values(sender="support@example.com")
        )
        session.commit()
    own = sqlite_api.post("/api/v1/tickets/T-000003/replies", {"text": "hi"})
    assert own.status == 409 and "own addresses" in own.json()["error"]["message"]
    with sqlite_api.gateway.session() as session:
        assert (
            session.execute(select(OutboxRow).where(OutboxRow.kind == "agent-reply")).first()
            is None
        )
        assert session.execute(select(Message).where(Message.direction == "out")).first() is None
    assert audit_actions(sqlite_api) == []


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilioApi]:
    api = FakeTwilioApi()
    yield api
    api.close()


def test_an_sms_reply_goes_to_the_customers_number_through_twilio(
    sqlite_api_config: Callable[..., Path],
    fake_twilio: FakeTwilioApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_TWILIO_AUTH_TOKEN", TOKEN)
    server = ApiServer(
        sqlite_api_config(
            webhooks__account_sid=SID,
            webhooks__from_number=OUR_NUMBER,
            webhooks__rest_base_url=fake_twilio.url,
        )
    ).start()
    try:
        event = {"v": 1, "event": "sms", "path": "/twilio/sms", "query": {}}
        event["params"] = sms_params("Scanner at the front desk is broken", "SM1")
        server.ingest(
            json.dumps(event).encode(), channel="twilio-sms", channel_key="twilio:sms:SM1"
        )
        (ticket,) = server.gateway.tickets()
        assert ticket.channel == "twilio-sms"
        sent = server.post(
            f"/api/v1/tickets/{ticket.reference}/replies",
            {"text": "A technician comes at 3pm.", "status": "waiting"},
        )
        assert sent.status == 201, sent.body
        assert sent.json()["message"]["channel"] == "sms"
        assert sent.json()["ticket"]["status"] == "waiting"
        assert sent.json()["ticket"]["sla"]["first_response_at"] is not None
        fake_twilio.requests.clear()  # the acknowledgement texted at intake is not ours
        with server.gateway.session() as session:
            session.execute(
                OutboxRow.__table__.update()
                .where(OutboxRow.kind != "agent-reply")
                .values(status="sent")
            )
            session.commit()
        assert send_due_sms(server.gateway.worker.sessions, server.gateway.settings) == 1
        (text,) = fake_twilio.texts()
        assert (text["To"], text["From"], text["Body"]) == (
            GROWTH_PHONE,
            OUR_NUMBER,
            "A technician comes at 3pm.",
        )
        # After STOP, nothing more is texted: the API says so instead of queueing.
        with server.gateway.session() as session:
            session.add(
                SmsOptOut(
                    phone=GROWTH_PHONE, opted_out=True, keyword="STOP", updated_at=clock.now()
                )
            )
            session.commit()
        stopped = server.post(f"/api/v1/tickets/{ticket.reference}/replies", {"text": "hi"})
        assert stopped.status == 409 and "STOP" in stopped.json()["error"]["message"]
    finally:
        server.stop()


def test_a_reply_through_the_running_daemon_reaches_the_relay_threaded(
    make_config: Callable[..., Path], relay: CapturingRelay, daemons: list[DaemonProcess]
) -> None:
    config = add_tokens(
        make_config(outbound__enabled=True, outbound__relay_port=relay.port, api__port=0)
    )
    daemon = DaemonProcess(config).start()
    daemons.append(daemon)
    daemon.send(
        make_email(subject="Printer offline", message_id="<p1@acme-clinic.example>"),
        sender="dana@acme-clinic.example",
    )
    base = f"http://{daemon.status()['listeners']['api']}"
    ref = wait_for(
        lambda: (
            (r := call(base, "GET", "/api/v1/tickets", token=WRITE_TOKEN)).status == 200
            and r.json()["tickets"]
            and r.json()["tickets"][0]["reference"]
        )
    )
    sent = call(
        base,
        "POST",
        f"/api/v1/tickets/{urllib.parse.quote(ref)}/replies",
        token=WRITE_TOKEN,
        body={"text": "Please power-cycle the printer."},
    )
    assert sent.status == 201, sent.body
    our_id = sent.json()["message"]["message_id"]
    mail = wait_for(lambda: _maybe(relay, our_id), timeout=60)
    assert mail["In-Reply-To"] == "<p1@acme-clinic.example>"
    assert f"[#{ref}]" in mail["Subject"]
    detail = call(base, "GET", f"/api/v1/tickets/{ref}", token=WRITE_TOKEN).json()
    assert detail["sla"]["first_response_at"] is not None
    daemon.stop()
    assert WRITE_TOKEN not in daemon.log.read_text()


def _maybe(relay: CapturingRelay, message_id: str) -> EmailMessage | None:
    try:
        return mail_with_id(relay, message_id)
    except AssertionError:
        return None
