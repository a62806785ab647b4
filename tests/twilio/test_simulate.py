"""`gateway simulate sms` texts the running webhook exactly as Twilio would: a signed form the
daemon accepts and tickets like any SMS, and a mismatched token the daemon refuses (so the
command can never be a way around the signature check)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.helpers import Gateway, free_port
from tests.twilio.conftest import GROWTH_PHONE, AppServer


def _served(twilio_config: Callable[..., Path]) -> tuple[Path, AppServer]:
    port = free_port()
    config = twilio_config(webhooks__port=port, webhooks__public_url=f"http://127.0.0.1:{port}")
    return config, AppServer(config, port=port).start()


def test_a_simulated_sms_is_signed_like_twilio_and_becomes_an_sms_ticket(
    twilio_config: Callable[..., Path], twilio_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config, app = _served(twilio_config)
    gw = Gateway(config)
    try:
        code = main(
            [
                "--config",
                str(config),
                "simulate",
                "sms",
                "--from",
                "(617) 555-0100",
                "The phone system is down again, nobody can call in",
            ]
        )
        assert code == 0
        assert "HTTP 200" in capsys.readouterr().out
        gw.drain()
        (ticket,) = gw.tickets()
        assert ticket.channel == "twilio-sms"
        assert ticket.account_id == "acme-clinic"  # the number, normalised to E.164
        assert ticket.subject.startswith("The phone system is down again")
    finally:
        app.stop()
        gw.close()


def test_a_token_other_than_the_daemons_is_refused_and_nothing_is_spooled(
    twilio_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, app = _served(twilio_config)  # the daemon side holds tests' TOKEN
    monkeypatch.setenv("GATEWAY_TWILIO_AUTH_TOKEN", "not-the-daemons-token")
    try:
        code = main(["--config", str(config), "simulate", "sms", "--from", GROWTH_PHONE, "hi"])
        assert code == 1
        captured = capsys.readouterr()
        assert "HTTP 403" in captured.out
        assert "auth token or public_url differs" in captured.err
        assert app.spool.depth() == 0
    finally:
        app.stop()


def test_without_a_token_the_command_says_what_to_set(
    twilio_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("GATEWAY_TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = twilio_config()
    assert main(["--config", str(config), "simulate", "sms", "--from", GROWTH_PHONE, "hi"]) == 2
    assert "$GATEWAY_TWILIO_AUTH_TOKEN" in capsys.readouterr().err
