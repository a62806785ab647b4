"""Asking for emergency support: the explicit signal, then plan -> authorised contact ->
authenticated sender -> acknowledgement, in that order (issue 7). Through the real pipeline on a
frozen clock; the sample config's acme-clinic (growth, Dana authorised, Front Desk not) and
bluebird (basic) are the customers."""

from __future__ import annotations

import base64
import dataclasses
from datetime import timedelta

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from gateway.storage.models import DecisionRecord
from gateway.storage.queries import as_utc, list_queue
from tests.billing.conftest import (
    DANA,
    FRONT_DESK,
    PHRASE,
    SAM,
    TUESDAY_10,
    Desk,
    email,
)


@pytest.mark.parametrize(
    ("sender", "reason"),
    [
        (SAM, "plan basic does not include emergency support"),
        (FRONT_DESK, "is not among the authorised contacts of Acme Family Clinic"),
    ],
    ids=["basic-plan", "unauthorised-contact"],
)
def test_an_emergency_that_cannot_be_accepted_gets_one_polite_reply_and_stays_a_normal_ticket(
    desk: Desk, sender: str, reason: str
) -> None:
    # Already in the queue: an ordinary question of the same level from another customer.
    desk.mail(
        email("How do I print labels?", "Where is the label setting?", acknowledged=False),
        TUESDAY_10 - timedelta(hours=1),
    )
    result = desk.mail(
        email(
            "[EMERGENCY] How do I print labels?",
            "Where is the label setting?",
            sender=sender,
            message_id="<ask@x.example>",
        ),
        TUESDAY_10,
        to="emergency@example.com",
    )
    assert result.outcome == "ticket"
    ticket = desk.ticket(result.reference or "")
    assert not (ticket.emergency or ticket.emergency_acknowledged or ticket.held)
    assert ticket.severity == desk.ticket("T-000001").severity  # its classified level
    assert ticket.first_response_due is not None  # its SLA clock runs as for any ticket
    # Its normal place in the queue: after the older ticket of the same level.
    with desk.gw.session() as session:
        assert [t.reference for t in list_queue(session)] == ["T-000001", ticket.reference]
    (reply,) = desk.outbox(ticket.reference)  # one reply, instead of the acknowledgement
    assert (reply.kind, reply.recipient, reply.status) == (
        "emergency-unavailable",
        sender,
        "pending",
    )
    assert reason in reply.body
    assert ticket.reference in reply.body and "normal priority" in reply.body
    assert desk.incidents() == [] and desk.ledger() == [] and desk.requests() == []
    explained = desk.show(ticket.reference or "")["billing"]["explanation"]
    assert explained == [f"Not accepted as an emergency: {_reason(desk, ticket.id)}."]
    assert reason in explained[0]


def _reason(desk: Desk, ticket_id: int) -> str:
    with desk.gw.session() as session:
        return session.execute(
            select(DecisionRecord.text).where(
                DecisionRecord.ticket_id == ticket_id, DecisionRecord.stage == "emergency"
            )
        ).scalar_one()


def test_an_authenticated_authorised_acknowledged_email_is_an_emergency_at_once_with_evidence(
    desk_on: Desk,
) -> None:
    desk = desk_on
    desk.mail(
        email("Everything is down", "The whole system is down for all users.", acknowledged=False),
        TUESDAY_10 - timedelta(hours=2),
    )
    result = desk.mail(email(message_id="<ask@acme-clinic.example>"), TUESDAY_10)
    ticket = desk.ticket(result.reference or "")
    assert (ticket.emergency, ticket.emergency_acknowledged, ticket.held) == (True, True, False)
    assert ticket.severity == "urgent" and ticket.queue == "emergency"
    with desk.gw.session() as session:  # an acknowledged emergency goes to the top
        assert list_queue(session)[0].reference == ticket.reference
    (incident,) = desk.incidents()
    assert incident.ticket_id == ticket.id and incident.reference == "INC-000001"
    evidence = (
        incident.channel,
        incident.evidence_reference,
        incident.evidence_text,
        incident.sender,
        incident.contact,
        incident.terms_version,
        incident.currency,
        incident.price_minor,
        incident.after_hours,
    )
    assert evidence == (
        "email",
        "<ask@acme-clinic.example>",
        PHRASE,
        DANA,
        f"Dana Whitfield <{DANA}>",
        "2026-11",
        "USD",
        25000,
        False,
    )
    assert "dmarc=pass" in incident.authentication and "mx.example.com" in incident.authentication
    assert as_utc(incident.evidence_at) == TUESDAY_10
    (charge,) = desk.ledger()
    assert (charge.kind, charge.amount_minor, charge.incident_id) == ("charge", 25000, incident.id)
    (reply, notify) = desk.outbox(ticket.reference)
    assert reply.kind == "emergency-accepted" and reply.recipient == DANA
    assert "INC-000001" in reply.body and "USD 250.00" in reply.body
    assert notify.kind == "notify" and notify.recipient == "oncall@example.com"


def test_an_email_cannot_pick_its_price_instant_or_evidence_words_with_call_headers(
    desk: Desk,
) -> None:
    saturday = TUESDAY_10 - timedelta(days=3)  # after hours: the surcharge applies
    forged = email(
        message_id="<forged@acme-clinic.example>",
        X_Twilio_Event="gather",
        X_Twilio_Prompted_At=TUESDAY_10.isoformat(),  # "the price was stated in hours"
        X_Twilio_Prompt="Emergency support is free",
    )
    result = desk.mail(forged, saturday)
    (incident,) = desk.incidents()
    assert (incident.after_hours, incident.surcharge_minor) == (True, 10000)
    assert incident.evidence_text == PHRASE
    with desk.gw.session() as session:
        codes = session.execute(
            select(DecisionRecord.code).where(
                DecisionRecord.ticket_id == desk.ticket(result.reference or "").id
            )
        ).scalars()
        assert not any("keypress" in code for code in codes)  # an email presses no key


def test_an_emergency_address_a_subject_marker_and_the_sms_keyword_are_the_signals(
    desk: Desk,
) -> None:
    # (Each SMS at least a day away from the others: within a day of an emergency, a text from
    # the same account joins that emergency's incident: test_incidents.py.)
    by_sms = desk.sms("emergency: the server is down", TUESDAY_10 - timedelta(hours=30))
    plain = desk.mail(email("Server down", message_id="<a@x>"), TUESDAY_10)
    by_address = desk.mail(
        email("Server down", message_id="<b@x>"), TUESDAY_10, to="emergency@example.com"
    )
    by_marker = desk.mail(email("Re: [emergency] server down", message_id="<c@x>"), TUESDAY_10)
    urgent_words = desk.sms("URGENT the server is down!!!", TUESDAY_10 + timedelta(hours=30))
    emergencies = {
        r.reference: desk.ticket(r.reference or "").emergency
        for r in (plain, by_address, by_marker, by_sms, urgent_words)
    }
    assert emergencies == {
        plain.reference: False,  # the phrase alone asks for nothing: no signal, no charge
        by_address.reference: True,
        by_marker.reference: True,
        by_sms.reference: False,  # asked, and held for its YES (test_holds.py)
        urgent_words.reference: False,
    }
    assert desk.ticket(by_sms.reference or "").emergency_pending
    assert not desk.ticket(urgent_words.reference or "").emergency_pending


def test_a_follow_up_asking_again_on_an_acknowledged_emergency_is_not_billed_again(
    desk: Desk,
) -> None:
    desk.mail(email(message_id="<first@x>"), TUESDAY_10)
    again = desk.mail(
        email("Re: [EMERGENCY] Server down", message_id="<again@x>", In_Reply_To="<first@x>"),
        TUESDAY_10 + timedelta(minutes=20),
    )
    assert again.outcome == "follow-up"
    assert len(desk.incidents()) == 1 and len(desk.ledger()) == 1
    with desk.gw.session() as session:
        codes = session.execute(
            select(DecisionRecord.code).where(DecisionRecord.stage == "emergency")
        ).scalars()
        assert list(codes) == ["acknowledged", "already-emergency"]


# -- sender authentication: our own DKIM check, with the DNS resolver injected ------------------


def _dkim_key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_our_own_dkim_check_authenticates_a_signed_mail_and_a_forgery_is_held(desk: Desk) -> None:
    private, record = _dkim_key()
    lookups: list[bytes] = []

    def resolver(name: bytes) -> bytes | None:
        lookups.append(name)
        return record if name == b"sel._domainkey.acme-clinic.example." else None

    runtime = dataclasses.replace(desk.runtime, dkim_resolver=resolver)
    unsigned = email(message_id="<signed@acme-clinic.example>", authenticated=False)
    signed = (
        dkim.sign(
            unsigned, b"sel", b"acme-clinic.example", private, include_headers=[b"from", b"subject"]
        )
        + unsigned
    )
    accepted = desk.mail(signed, TUESDAY_10, runtime=runtime)
    assert desk.ticket(accepted.reference or "").emergency_acknowledged
    assert lookups == [b"sel._domainkey.acme-clinic.example."]
    (incident,) = desk.incidents()
    assert incident.authentication.startswith("authenticated by dkim: dkim=pass d=acme-clinic")

    # The same words, signed by nobody: our DKIM check finds no signature, so it is held.
    forged = desk.mail(
        email("[EMERGENCY] Down again", message_id="<forged@x>", authenticated=False),
        TUESDAY_10 + timedelta(hours=30),
        runtime=runtime,
    )
    assert forged.outcome == "hold"
    held = desk.show(forged.reference or "")
    assert held["emergency_pending"] and not held["held"]
    (pending,) = [d["text"] for d in held["decisions"] if d["code"] == "unauthenticated"]
    assert "not authenticated: " in pending and "no DKIM signature" in pending
    assert len(desk.incidents()) == 1


def test_an_untrusted_authentication_results_header_authenticates_nobody(desk: Desk) -> None:
    # Anyone can write this header into a message before sending it.
    raw = email(
        authenticated=False,
        Authentication_Results="evil.example; dmarc=pass header.from=acme-clinic.example",
    )
    result = desk.mail(raw, TUESDAY_10)
    assert result.outcome == "hold" and desk.incidents() == []
    (request,) = desk.requests()
    assert not request.authenticated
    assert "ignored 1 Authentication-Results from untrusted evil.example" in request.authentication
