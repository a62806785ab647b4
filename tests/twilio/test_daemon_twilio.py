"""The webhooks inside the real daemon: TwiML while the database is away, tickets and the
reference SMS after it returns (DESIGN promise 1 for Twilio)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import DaemonProcess, wait_for
from tests.test_durability import SwitchableProxy, proxy, tickets  # noqa: F401 - fixture
from tests.twilio.conftest import TOKEN, FakeTwilioApi, signed_post, sms_params, twiml


def test_with_the_database_down_sms_still_gets_twiml_and_the_ticket_appears_after_recovery(
    twilio_config: Callable[..., Path],
    proxy: tuple[SwitchableProxy, str],  # noqa: F811 - the fixture imported above
    pg_url: str,
    fake_twilio: FakeTwilioApi,
) -> None:
    switch, proxied_url = proxy
    config = twilio_config(storage__url=proxied_url)
    daemon = DaemonProcess(config, env={"GATEWAY_TWILIO_AUTH_TOKEN": TOKEN}).start()
    try:
        port = int(daemon.status()["listeners"]["webhooks"].rsplit(":", 1)[1])
        # Answered while the database is still down (it comes up only below): the webhook
        # needs the spool, never the database. How fast it answers is bench/twilio_webhooks.py's.
        status, body = signed_post(port, "/twilio/sms", sms_params("Server room flooding", "SMD1"))
        assert status == 200 and twiml(body).findtext("Message")
        status, body = signed_post(
            port, "/twilio/voice", {"CallSid": "CAD1", "From": "+16175550100", "To": "+1"}
        )
        assert status == 200 and twiml(body).find("Gather") is not None
        time.sleep(1.5)
        assert daemon.status()["spool_depth"] == 1
        switch.up()
        wait_for(lambda: daemon.status()["spool_depth"] == 0, timeout=60)
        (ticket,) = tickets(config)
        assert ticket["channel"] == "twilio-sms"
        wait_for(lambda: fake_twilio.texts(), timeout=30)
        assert str(ticket["reference"]) in fake_twilio.texts()[0]["Body"]
        assert daemon.status()["channels"]["webhooks"]["accepted"] == 1
    finally:
        daemon.stop()
