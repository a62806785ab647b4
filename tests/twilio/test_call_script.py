"""What a caller hears (channels/call_script.py), over signed webhooks on a real socket: the
truth after a keypress, the price before it, how to reach us when we cannot take the call; and
that the ticket and the billing evidence record the very words spoken (issue 18, items 4-6)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.outbound import twilio_sender as twilio_outbound
from gateway.storage.billing_tables import Incident
from gateway.storage.models import DecisionRecord, Intake
from tests.helpers import (
    AFTER_CLOSING,
    AFTER_HOURS,
    BEFORE_CLOSING,
    BUSINESS_HOURS,
    Gateway,
    gateway_cli,
)
from tests.twilio.conftest import (
    BASIC_PHONE,
    GROWTH_PHONE,
    OUR_NUMBER,
    SID,
    AppServer,
    FakeTwilioApi,
    path_of,
    signed_post,
    twiml,
)

App = tuple[AppServer, Gateway]
UNAUTHORISED_PHONE = "+16175550177"
UNKNOWN_PHONE = "+16175550999"

# A growth-plan account whose only contact may not ask for emergency support.
UNAUTHORISED_CUSTOMER = """
[[account]]
id = "harbour-dental"
name = "Harbour Dental"
plan = "growth"

  [[account.contacts]]
  name = "Robin Vale"
  phone = "+16175550177"
  emergency_authorised = false
"""


@pytest.fixture
def app_and_gateway(
    twilio_config: Callable[..., Path], twilio_env: None
) -> Iterator[App]:
    config = twilio_config()
    with (config / "customers.toml").open("a") as fh:
        fh.write(UNAUTHORISED_CUSTOMER)
    gw = Gateway(config)
    app = AppServer(config).start()
    yield app, gw
    app.stop()
    gw.close()


def call_params(caller: str, call: str, **extra: str) -> dict[str, str]:
    return {"CallSid": call, "AccountSid": SID, "From": caller, "To": OUR_NUMBER, **extra}


def answer(app: AppServer, caller: str, call: str) -> tuple[str, str]:
    """Twilio answers a call: the emergency prompt's words and the keypress URL it posts to."""
    status, body = signed_post(app.port, "/twilio/voice", call_params(caller, call))
    assert status == 200
    gather = twiml(body).find("Gather")
    assert gather is not None, body
    return gather.findtext("Say") or "", path_of(gather.get("action", ""))


def press(app: AppServer, action: str, caller: str, call: str, digit: str) -> str:
    """The caller presses `digit`: what they hear next."""
    status, body = signed_post(app.port, action, call_params(caller, call, Digits=digit))
    assert status == 200
    return " ".join(say.text or "" for say in twiml(body).iter("Say"))


def hangs_up_after(app: AppServer, caller: str, call: str) -> str:
    status, body = signed_post(app.port, "/twilio/voice", call_params(caller, call))
    root = twiml(body)
    assert status == 200 and [e.tag for e in root] == ["Say", "Hangup"]
    return root.findtext("Say") or ""


# -- item 4: pressing 1 without authorisation ---------------------------------------------------


def test_an_unauthorised_contact_pressing_1_hears_it_is_not_an_emergency_as_the_sms_says(
    app_and_gateway: App, fake_twilio: FakeTwilioApi
) -> None:
    app, gw = app_and_gateway
    _, action = answer(app, UNAUTHORISED_PHONE, "CA-unauth")
    heard = press(app, action, UNAUTHORISED_PHONE, "CA-unauth", "1")
    assert "noted" not in heard
    assert "could not accept this call as an emergency" in heard
    assert "not among the authorised contacts of Harbour Dental" in heard
    assert "normal priority" in heard and "nothing is charged" in heard
    assert "ask your administrator to add you to the authorised contacts" in heard  # who can
    assert heard.endswith("Please leave your message after the tone, then hang up.")

    gw.drain()
    (ticket,) = gw.tickets()
    assert not ticket.emergency and ticket.severity != "urgent"
    assert twilio_outbound.send_due_sms(gw.worker.sessions, gw.box.current.settings) >= 1
    (text,) = [t["Body"] for t in fake_twilio.texts() if "emergency" in t["Body"]]
    # The SMS and the call tell the same story: the same reason, the same help, normal priority.
    assert "not among the authorised contacts of Harbour Dental" in text
    assert "ask your administrator to add you to the authorised contacts" in text
    assert "normal priority" in text


def test_an_authorised_contact_pressing_1_hears_the_emergency_is_noted(
    app_and_gateway: App,
) -> None:
    app, _ = app_and_gateway
    _, action = answer(app, GROWTH_PHONE, "CA-auth")
    assert press(app, action, GROWTH_PHONE, "CA-auth", "1").startswith("Your emergency is noted.")


# -- item 5: the price is spoken, and the evidence records the words ----------------------------


def test_within_business_hours_the_prompt_states_the_plans_price_without_surcharge(
    app_and_gateway: App, pin_clock: Callable[[str], datetime]
) -> None:
    pin_clock(BUSINESS_HOURS)
    prompt, _ = answer(app_and_gateway[0], GROWTH_PHONE, "CA-day")
    assert "billed per incident: USD 250.00, under our emergency support terms version 2026-11" in (
        prompt
    )
    assert "surcharge" not in prompt
    assert ("If your account has prepaid incidents left, one of them is used instead of the "
            "price, and nothing more is charged. Pressing 1 accepts this charge.") in prompt


def test_after_hours_the_prompt_adds_the_plans_after_hours_surcharge(
    app_and_gateway: App, pin_clock: Callable[[str], datetime]
) -> None:
    pin_clock(AFTER_HOURS)
    prompt, _ = answer(app_and_gateway[0], GROWTH_PHONE, "CA-night")
    assert (
        "USD 250.00 plus an after-hours surcharge of USD 100.00 at this hour, USD 350.00 in all"
        in prompt
    )
    assert "one of them is used instead of the price, and the surcharge is still charged" in prompt


def test_the_billing_evidence_records_the_exact_words_heard_and_their_price(
    app_and_gateway: App, pin_clock: Callable[[str], datetime]
) -> None:
    app, gw = app_and_gateway
    # Heard just before closing, pressed just after: the caller is charged what they heard.
    pin_clock(BEFORE_CLOSING)
    prompt, action = answer(app, GROWTH_PHONE, "CA-ev")
    assert "surcharge" not in prompt
    pin_clock(AFTER_CLOSING)
    press(app, action, GROWTH_PHONE, "CA-ev", "1")
    gw.drain()
    (ticket,) = gw.tickets()
    assert ticket.emergency
    with gw.session() as session:
        incident = session.execute(select(Incident)).scalar_one()
        note = session.execute(
            select(DecisionRecord).where(DecisionRecord.code == "emergency-keypress")
        ).scalar_one()
    assert incident.evidence_text == f'pressed 1 after hearing "{prompt}"'
    assert (incident.price_minor, incident.surcharge_minor) == (25000, 0)
    assert not incident.after_hours
    assert f'after hearing "{prompt}"' in note.text
    assert "rate in the agreement" not in note.text


# -- item 6: callers we cannot serve -----------------------------------------------------------


def test_a_plan_without_phone_support_hears_the_support_address_from_the_config(
    app_and_gateway: App,
) -> None:
    app, gw = app_and_gateway
    said = hangs_up_after(app, BASIC_PHONE, "CA-basic")
    assert "Your support plan does not include phone support." in said
    assert "Please email us at support@example.com." in said  # [outbound] from_address
    gw.drain()
    (intake,) = gw.intakes()
    assert intake.outcome == "reject"
    with gw.session() as session:
        stored = session.execute(select(Intake)).scalar_one()
        assert stored.reason


def test_an_unknown_number_hears_a_neutral_message_not_about_its_plan(
    app_and_gateway: App,
) -> None:
    app, _ = app_and_gateway
    said = hangs_up_after(app, UNKNOWN_PHONE, "CA-unknown")
    assert "plan" not in said.lower()
    assert "We do not recognise the number you are calling from" in said
    assert "email us at support@example.com" in said


def test_gateway_intakes_outcome_reject_lists_rejected_calls_with_channel_caller_reason_time(
    app_and_gateway: App, pin_clock: Callable[[str], datetime]
) -> None:
    app, gw = app_and_gateway
    pin_clock(BUSINESS_HOURS)
    config = gw.box.config_dir
    empty = gateway_cli(config, "intakes", "--outcome", "reject")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.decode().splitlines() == ["no reject intakes"]

    hangs_up_after(app, BASIC_PHONE, "CA-r1")
    hangs_up_after(app, UNKNOWN_PHONE, "CA-r2")
    _, action = answer(app, GROWTH_PHONE, "CA-ok")
    press(app, action, GROWTH_PHONE, "CA-ok", "2")  # a ticket, not a rejection
    gw.drain()

    out = gateway_cli(config, "intakes", "--outcome", "reject")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.decode().splitlines()
    assert header.split() == ["RECEIVED", "OUTCOME", "CHANNEL", "FROM", "REASON"]
    assert len(rows) == 2
    # Aligned columns: every row's channel starts where the header's CHANNEL does.
    column = header.index("CHANNEL")
    assert all(row[column:].startswith("twilio-voice") for row in rows)
    by_caller = {next(p for p in row.split() if p.startswith("+")): row for row in rows}
    assert set(by_caller) == {BASIC_PHONE, UNKNOWN_PHONE}
    assert "plan basic does not include voice" in by_caller[BASIC_PHONE]
    assert by_caller[BASIC_PHONE].startswith("2026-12-15T15:00")  # when it came in

    listed = gateway_cli(config, "intakes", "--outcome", "reject", "--json")
    records = json.loads(listed.stdout)
    assert {r["outcome"] for r in records} == {"reject"}
    assert {r["dedup_key"] for r in records} == {"twilio:call:CA-r1", "twilio:call:CA-r2"}
    everything = json.loads(gateway_cli(config, "intakes", "--json").stdout)
    assert {r["outcome"] for r in everything} == {"reject", "ticket"}
