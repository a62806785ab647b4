"""The issue's outcome, end to end through `gateway run`: a help desk whose webhook fails the
first three attempts (500, a dropped connection, 503) sees the ticket exactly once by
idempotency key, every request verifies with docs/forwarding.md's snippet, and the customer's
follow-up arrives as an update."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.forwarding.support import (
    SECRET,
    WEBHOOK,
    Receiver,
    readme_verify,
    webhook_toml,
    write_forwarding,
)
from tests.helpers import DaemonProcess, make_email, wait_for


def test_a_receiver_failing_three_times_sees_the_ticket_once_and_every_signature_verifies(
    make_config: Callable[..., Path],
    receivers: Callable[..., Receiver],
    daemons: list[DaemonProcess],
) -> None:
    receiver = receivers(500, "drop", 503)
    config = make_config()
    write_forwarding(config, webhook_toml(WEBHOOK, receiver.url))
    env = {"GATEWAY_FORWARD_SECRET_HELPDESK": SECRET}
    daemon = DaemonProcess(config, env=env).start()
    daemons.append(daemon)

    daemon.send(make_email(subject="Scanner offline", message_id="<fwd-1@acme-clinic.example>"))
    try:
        (accepted,) = wait_for(receiver.accepted, timeout=60)
    except AssertionError:
        raise AssertionError(f"not delivered; daemon log:\n{daemon.log.read_text()}") from None

    attempts = list(receiver.requests)
    assert [r.answer for r in attempts] == [500, "drop", 503, 200]
    # One delivery: the same key, the same bytes, on every attempt; the attempt counter moves.
    assert {r.key for r in attempts} == {accepted.key}
    assert {r.body for r in attempts} == {accepted.body}
    assert [r.headers["X-Intake-Attempt"] for r in attempts] == ["1", "2", "3", "4"]
    verify = readme_verify()
    assert all(verify(SECRET.encode(), r.headers, r.body) for r in attempts)
    # After deduplication by key the help desk has the ticket exactly once.
    by_key = {r.key: r.json for r in attempts}
    (payload,) = by_key.values()
    assert payload["event"] == "ticket.created"
    assert accepted.headers["X-Intake-Event"] == "ticket.created"
    ticket = payload["ticket"]
    assert ticket["subject"] == "Scanner offline"
    assert ticket["schema"] == 1 and ticket["status"] == "new"
    assert ticket["messages"][0]["message_id"] == "fwd-1@acme-clinic.example"
    assert accepted.key == f"{WEBHOOK}:{ticket['reference']}:{payload['sequence']}"

    # The customer's follow-up reaches the help desk as an update, with its own key.
    daemon.send(
        make_email(
            subject="Re: Scanner offline",
            body="It is still offline after a restart.",
            message_id="<fwd-2@acme-clinic.example>",
            In_Reply_To="<fwd-1@acme-clinic.example>",
        )
    )
    update = wait_for(lambda: [r for r in receiver.accepted() if r.key != accepted.key])[0]
    assert update.json["event"] == "ticket.updated"
    assert update.json["ticket"]["reference"] == ticket["reference"]
    assert update.json["ticket"]["message_count"] == 2
    assert update.json["sequence"] > payload["sequence"]
    assert verify(SECRET.encode(), update.headers, update.body)
