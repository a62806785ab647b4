"""`gateway explain` prints the decision the daemon then makes, for the sample messages in
docs/samples, creating nothing."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.intake.spool import Envelope
from gateway.pipeline import process
from tests.helpers import ROOT, Gateway, gateway_cli

SAMPLES = sorted((ROOT / "docs" / "samples").glob("*.eml"))
AT = datetime(2026, 11, 24, 9, 30, tzinfo=ZoneInfo("America/New_York"))


def field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(.*)$", text, re.M)
    assert match, f"no {name}: line in\n{text}"
    return match.group(1).strip()


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_explain_prints_the_decision_the_daemon_then_makes(
    make_config: Callable[..., Path], sample: Path
) -> None:
    config = make_config()
    out = gateway_cli(config, "explain", "--at", AT.isoformat(), str(sample))
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert not (config.parent / "state" / "gateway.db").exists(), "explain must create nothing"

    gw = Gateway(config)
    try:
        raw = sample.read_bytes()
        env = Envelope(channel="smtp", received_at=AT, mail_from="x@y.example")
        result = process(
            raw, env, "sample", gw.box.current, gw.worker.sessions, gw.worker.blobs, now=AT
        )
        tickets = gw.tickets()
    finally:
        gw.close()
    outcome = field(text, "outcome").split(":", 1)[0]
    expected = {"Accept": "ticket", "Discard": "discard", "Reject": "reject", "Hold": "hold"}
    assert expected[outcome] == result.outcome
    if result.outcome != "ticket":
        assert tickets == []
        return
    (ticket,) = tickets
    severity = field(text, "severity").split()[0]
    assert severity == ticket.severity
    assert field(text, "queue").split()[0] == ticket.queue
    sla = field(text, "sla")
    due = ticket.first_response_due
    assert due is not None
    due_text = (
        due.replace(tzinfo=due.tzinfo or ZoneInfo("UTC"))
        .astimezone(ZoneInfo("UTC"))
        .isoformat()
        .replace("+00:00", "Z")
    )
    assert due_text in sla


def test_explain_of_a_message_already_ingested_says_it_would_be_a_duplicate(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    from tests.helpers import make_email

    config = make_config()
    raw = make_email(subject="Export question", body="How do I export to CSV?")
    gw = Gateway(config)
    try:
        gw.ingest(raw)
        gw.drain()
        (ticket,) = gw.tickets()
    finally:
        gw.close()
    path = tmp_path / "again.eml"
    path.write_bytes(raw)
    out = gateway_cli(config, "explain", "--at", AT.isoformat(), str(path))
    assert out.returncode == 0, out.stderr.decode()
    outcome = field(out.stdout.decode(), "outcome")
    assert outcome.startswith("Duplicate:"), outcome
    assert f"duplicate of {ticket.reference}" in outcome


QUOTED_REPLY = b"""From: dana@acme-clinic.example
To: support@example.com
Subject: Re: printer
Message-ID: <quoted@acme-clinic.example>

Nobody in the office can log in since 8am, the whole system is down.

--
Dana
Acme Clinic

On Mon, Nov 23, 2026 at 10:00 AM Support wrote:
> How do I export the report to CSV?
"""


def test_explain_shows_the_normalised_text_and_the_severity_dimensions(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config()
    path = tmp_path / "reply.eml"
    path.write_bytes(QUOTED_REPLY)
    out = gateway_cli(config, "explain", "--at", AT.isoformat(), str(path))
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    normalised = field(text, "normalised")
    assert "whole system is down" in normalised
    assert "export the report" not in normalised and "Acme Clinic" not in normalised
    assert normalised.endswith("(quoted,signature)")
    assert field(text, "dimensions") == "scope=everyone state=down time=now critical=yes"
