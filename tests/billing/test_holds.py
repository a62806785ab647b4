"""Held emergency requests: without an authenticated sender or an acknowledgement the request
waits for the contact's confirmation (one "confirm the charge" message). The request is held,
not the ticket: it keeps its queue place and SLA clock, marked "emergency pending" (issue 17
item 1). Only a reply to that message from the contact's own mailbox, or YES from the contact's
phone, makes it an emergency; nobody answering leaves the ticket where it was, unbilled."""

from __future__ import annotations

import email as email_lib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import clock
from gateway.cli.main import main as gateway_main
from gateway.emergency.ledger import add_bundle
from gateway.emergency.rules import response_sla
from gateway.outbound import mail_sender as outbox_sender
from gateway.outbound import twilio_sender as twilio_outbound
from gateway.policy.plans import due_times, sla_for
from gateway.privacy.audit import Actor
from gateway.storage.models import DecisionRecord, SmsOptOut, TicketEvent
from gateway.storage.queries import as_utc, list_queue
from tests.billing.conftest import DANA, PHRASE, TUESDAY_10, Desk, email
from tests.helpers import BUSINESS_HOURS, CapturingRelay, Gateway
from tests.twilio.conftest import (
    BASIC_CUSTOMER,
    BASIC_PHONE,
    GROWTH_PHONE,
    OUR_NUMBER,
    PUBLIC,
    SID,
    TOKEN,
    AppServer,
    FakeTwilioApi,
    signed_post,
    sms_params,
)


def test_a_forged_from_is_held_and_only_a_reply_from_the_real_mailbox_releases_it(
    make_config: Callable[..., Path],
    tmp_path: Path,
    relay: CapturingRelay,
    pin_clock: Callable[[str], datetime],
) -> None:
    """End to end: spool -> worker -> outbox -> a real SMTP relay -> the mailbox's reply."""
    pin_clock(BUSINESS_HOURS)
    gw = Gateway(make_config(storage__url=f"sqlite:///{tmp_path / 'gw.db'}"))
    try:
        # The forger writes as Dana, with the acknowledgement, but nobody authenticated it.
        gw.ingest(email(message_id="<forged@evil.example>", authenticated=False))
        gw.drain()
        (ticket,) = gw.tickets()
        assert ticket.emergency_pending and not ticket.emergency and not ticket.held
        assert ticket.first_response_due is not None  # its own clock runs
        (intake,) = gw.intakes()
        assert intake.reason.startswith("awaiting acknowledgement: ")
        assert "alone is not enough" in intake.reason
        # The one confirmation request goes to Dana's own mailbox, through the real relay.
        outbound = replace(gw.settings.gateway.outbound, enabled=True, relay_port=relay.port)
        assert outbox_sender.send_due(gw.worker.sessions, outbound, "test") == 1
        (sent,) = relay.messages
        prompt = email_lib.message_from_bytes(sent, policy=policy.default)
        assert relay.recipients == [[DANA]]
        assert "USD 250.00" in prompt.get_content() and "CONFIRM" in prompt.get_content()
        prompt_id = str(prompt["Message-ID"])

        forgeries = [
            # the token in the subject, the word, the forged From: still not a reply to it
            email(f"Re: [#{ticket.reference}] CONFIRM", "CONFIRM", message_id="<f1@evil>"),
            # a reply to the forger's own first mail
            email(
                "Re: CONFIRM",
                "CONFIRM",
                message_id="<f2@evil>",
                In_Reply_To="<forged@evil.example>",
            ),
            # even knowing our Message-ID (it cannot), from another address it is not Dana's
            email(
                "Re: confirm",
                "CONFIRM",
                sender="mallory@evil.example",
                message_id="<f3@evil>",
                In_Reply_To=prompt_id,
            ),
        ]
        for raw in forgeries:
            gw.ingest(raw)
        gw.drain()
        (still,) = gw.tickets()
        assert still.emergency_pending and not still.emergency and still.message_count == 4
        with gw.session() as session:
            refused = session.execute(
                select(DecisionRecord.text).where(DecisionRecord.code == "not-confirmed")
            ).scalars()
            assert [text.split(",")[0] for text in refused] == [
                f"from {DANA}",
                f"from {DANA}",
                "a reply to our confirmation request",
            ]

        # Dana's real mailbox answers our message: that proves she controls it.
        gw.ingest(
            email(
                f"Re: {prompt['Subject']}",
                f"CONFIRM\n\nOn Tue, Support wrote:\n> reply with the word CONFIRM\n> {PHRASE}",
                message_id="<real-reply@acme-clinic.example>",
                authenticated=False,
                acknowledged=False,
                In_Reply_To=prompt_id,
            )
        )
        gw.drain()
        released = gw.tickets()[0]
        assert (
            released.emergency_pending,
            released.emergency,
            released.emergency_acknowledged,
        ) == (False, True, True)
        assert released.severity == "urgent" and released.first_response_due is not None
        with gw.session() as session:
            from gateway.storage.billing_tables import Incident

            (incident,) = session.execute(select(Incident)).scalars()
        assert incident.evidence_reference == "<real-reply@acme-clinic.example>"
        assert incident.evidence_text == "CONFIRM"
        assert incident.sender == DANA and incident.contact == f"Dana Whitfield <{DANA}>"
        assert f"to our confirmation request <{prompt_id.strip('<>')}>" in incident.authentication
    finally:
        gw.close()


def test_without_acknowledgement_it_is_held_with_exactly_one_request_and_a_reply_releases_it(
    desk: Desk,
) -> None:
    asked = desk.mail(email(acknowledged=False, message_id="<ask@a>"), TUESDAY_10)
    ref = asked.reference or ""
    assert asked.outcome == "hold"
    held = desk.show(ref)
    assert held["emergency_pending"] and not held["held"]
    assert held["first_response_due"] is not None and held["resolution_due"] is not None
    with desk.gw.session() as session:  # in the queue at its own severity, not after the rest
        desk.mail(
            email("Question", "How do I print?", acknowledged=False, message_id="<q@a>"), TUESDAY_10
        )
        assert [t.reference for t in list_queue(session)] == [ref, "T-000002"]
    (prompt,) = desk.outbox(ref)
    assert (prompt.kind, prompt.recipient) == ("confirm-charge", DANA)
    for words in (
        "USD 250.00 per incident",
        "USD 100.00 surcharge outside business hours",
        "version 2026-11",
        "the word CONFIRM",
        "within 4 hours",
    ):
        assert words in prompt.body, words
    assert "Prepaid:       none left" in prompt.body  # the account has no prepaid incidents

    # More mail on the held ticket, even asking again: still the one request.
    desk.mail(
        email(
            "Re: [EMERGENCY] Server down",
            "Still down.",
            acknowledged=False,
            message_id="<more@a>",
            In_Reply_To="<ask@a>",
        ),
        TUESDAY_10 + timedelta(minutes=5),
    )
    # A reply to our request that only quotes it (the client quoted our instruction).
    desk.mail(
        email(
            "Re: confirm",
            "Who are you?\n\n> reply to this email with the word CONFIRM",
            acknowledged=False,
            message_id="<quote@a>",
            In_Reply_To=f"<{prompt.header_message_id}>",
        ),
        TUESDAY_10 + timedelta(minutes=10),
    )
    assert [r.kind for r in desk.outbox(ref)] == ["confirm-charge"]
    assert desk.ticket(ref).emergency_pending and desk.incidents() == []

    release = TUESDAY_10 + timedelta(minutes=30)
    confirmed = desk.mail(
        email(
            "Re: confirm",
            "Confirm, please hurry.",
            acknowledged=False,
            message_id="<yes@a>",
            In_Reply_To=f"<{prompt.header_message_id}>",
        ),
        release,
    )
    assert confirmed.outcome == "follow-up"
    ticket = desk.ticket(ref)
    assert (ticket.emergency_pending, ticket.emergency_acknowledged, ticket.severity) == (
        False,
        True,
        "urgent",
    )
    # The emergency's target counts from the release, on emergency.toml's response calendar,
    # but a due time only ever moves earlier: the clock the ticket kept while its request was
    # pending still binds where it is the sooner.
    policy = desk.runtime.policy
    due = due_times(
        response_sla(sla_for(policy.severity, policy.plans, "urgent", "growth"), policy.emergency),
        policy.calendars,
        release,
    )
    kept = datetime.fromisoformat(str(held["first_response_due"]).replace("Z", "+00:00"))
    assert due.first_response is not None
    assert as_utc(ticket.first_response_due) == min(due.first_response, kept)
    (incident,) = desk.incidents()
    assert (incident.evidence_reference, incident.evidence_text) == (
        "<yes@a>",
        "Confirm, please hurry.",
    )
    assert as_utc(incident.evidence_at) == release
    assert incident.price_minor == 25000 and incident.terms_version == "2026-11"
    (request,) = desk.requests()
    assert request.status == "confirmed" and request.reference == "<ask@a>"
    assert [r.kind for r in desk.outbox(ref)] == ["confirm-charge", "emergency-accepted", "notify"]


def test_the_request_to_confirm_says_what_the_accounts_prepaid_incidents_would_pay(
    desk: Desk,
) -> None:
    with desk.gw.worker.sessions.begin() as session:
        assert add_bundle(session, "acme-clinic", 3, actor=Actor("alice", "cli"),
                          at=TUESDAY_10) is None
    asked = desk.mail(email(acknowledged=False, message_id="<ask@a>"), TUESDAY_10)
    (prompt,) = desk.outbox(asked.reference or "")
    assert prompt.kind == "confirm-charge"
    assert ("Prepaid:       3 incidents left: one would pay this incident's price, so nothing "
            "more is charged") in prompt.body


def test_a_held_request_nobody_confirms_expires_and_leaves_the_ticket_where_it_was_unbilled(
    desk: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = desk.mail(
        email("[EMERGENCY] Question", "How do I change my password?", acknowledged=False),
        TUESDAY_10,
    )
    ref = asked.reference or ""
    before = desk.ticket(ref)
    classified = before.severity
    config = str(desk.gw.settings.directory)

    def release_holds(at: datetime) -> str:
        assert (
            gateway_main(["--config", config, "billing", "release-holds", "--at", at.isoformat()])
            == 0
        )
        return capsys.readouterr().out

    deadline = TUESDAY_10 + timedelta(minutes=240)
    assert "no emergency request is past its deadline" in release_holds(
        deadline - timedelta(seconds=1)
    )
    assert desk.ticket(ref).emergency_pending
    assert release_holds(deadline) == (
        f"{ref}: emergency request expired, no confirmation in time; not billed, "
        "the ticket keeps its place\n"
    )
    ticket = desk.ticket(ref)
    assert (ticket.emergency_pending, ticket.emergency, ticket.severity) == (
        False,
        False,
        classified,
    )
    # Where it was: its queue and the clock it has had since it arrived.
    policy = desk.runtime.policy
    due = due_times(
        sla_for(policy.severity, policy.plans, classified, "growth"), policy.calendars, TUESDAY_10
    )
    assert (ticket.queue, ticket.first_response_due) == (before.queue, before.first_response_due)
    assert as_utc(ticket.first_response_due) == due.first_response
    assert desk.incidents() == [] and desk.ledger() == []
    (request,) = desk.requests()
    assert request.status == "expired"
    with desk.gw.session() as session:
        note = session.execute(
            select(TicketEvent).where(TicketEvent.kind == "emergency", TicketEvent.new == "expired")
        ).scalar_one()
    assert "not billed" in note.reason and "4 hours" in note.reason
    prompt, notice = desk.outbox(ref)
    assert (notice.kind, notice.recipient, notice.status) == ("emergency-released", DANA, "pending")
    assert notice.in_reply_to == prompt.header_message_id and "Nothing is charged" in notice.body
    # A confirmation arriving after the release bills nothing.
    desk.mail(
        email(
            "Re: confirm",
            "CONFIRM",
            acknowledged=False,
            message_id="<late@a>",
            In_Reply_To=f"<{prompt.header_message_id}>",
        ),
        deadline + timedelta(minutes=5),
    )
    assert desk.incidents() == [] and not desk.ticket(ref).emergency
    assert release_holds(deadline + timedelta(days=1)).startswith(
        "no emergency request is past its deadline"
    )


# -- SMS: YES to our prompt, end to end through the signed webhooks and Twilio's REST API -------


@pytest.fixture
def twilio_gateway(
    make_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[AppServer, Gateway, FakeTwilioApi]]:
    monkeypatch.setenv("GATEWAY_TWILIO_AUTH_TOKEN", TOKEN)
    api = FakeTwilioApi()
    config = make_config(
        storage__url=f"sqlite:///{tmp_path / 'gw.db'}",
        webhooks__public_url=PUBLIC,
        webhooks__account_sid=SID,
        webhooks__from_number=OUR_NUMBER,
        webhooks__rest_base_url=api.url,
    )
    with (config / "customers.toml").open("a") as fh:
        fh.write(BASIC_CUSTOMER)
    gw = Gateway(config)
    app = AppServer(config).start()
    yield app, gw, api
    app.stop()
    gw.close()
    api.close()


def test_an_sms_emergency_is_held_and_yes_from_the_contacts_phone_releases_it(
    twilio_gateway: tuple[AppServer, Gateway, FakeTwilioApi],
    pin_clock: Callable[[str], datetime],
) -> None:
    pin_clock(BUSINESS_HOURS)  # after hours, the confirmation names the surcharge
    app, gw, api = twilio_gateway

    def text(body: str, sid: str, sender: str = GROWTH_PHONE) -> None:
        assert signed_post(app.port, "/twilio/sms", sms_params(body, sid, sender))[0] == 200
        gw.drain()

    def send() -> list[str]:
        twilio_outbound.send_due_sms(gw.worker.sessions, gw.box.current.settings)
        return [t["Body"] for t in api.texts()]

    text("EMERGENCY our server is down", "SM1")
    (ticket,) = gw.tickets()
    assert ticket.emergency_pending and not ticket.held
    (prompt,) = send()
    assert "Reply YES to confirm the charge" in prompt and "USD 250.00" in prompt
    # YES from a number we never asked is Twilio's opt-in keyword, as it always was.
    text("YES", "SM2", BASIC_PHONE)
    assert gw.tickets()[0].emergency_pending

    text("yes", "SM3")
    (released,) = gw.tickets()
    assert (released.emergency_pending, released.emergency_acknowledged, released.severity) == (
        False,
        True,
        "urgent",
    )
    with gw.session() as session:
        from gateway.storage.billing_tables import Incident

        (incident,) = session.execute(select(Incident)).scalars()
        # Only the stranger's YES was START; Dana's YES answered our prompt.
        opts = [(o.phone, o.keyword) for o in session.execute(select(SmsOptOut)).scalars()]
        assert opts == [(BASIC_PHONE, "START")]
    assert (incident.channel, incident.evidence_reference, incident.evidence_text) == (
        "sms",
        "SM3",
        "yes",
    )
    assert incident.sender == GROWTH_PHONE and "as reported by Twilio" in incident.authentication
    assert [i.outcome for i in gw.intakes()] == ["hold", "discard", "follow-up"]
    accepted = send()[-1]
    assert "accepted (incident INC-000001)" in accepted
    assert released.first_response_due is not None  # its clock runs from the YES


def test_worker_zero_releases_held_requests_whose_time_is_up_on_its_own(desk: Desk) -> None:
    # Asked five hours ago by the wall clock (the worker's job reads it): the four hours are up.
    asked = desk.mail(email(acknowledged=False), clock.now() - timedelta(hours=5))
    recent = desk.mail(
        email(acknowledged=False, message_id="<recent@a>"), clock.now() - timedelta(hours=1)
    )
    desk.gw.worker.release_holds_once()
    assert not desk.ticket(asked.reference or "").emergency_pending
    assert desk.ticket(recent.reference or "").emergency_pending
    assert [r.status for r in desk.requests()] == ["expired", "awaiting"]
