"""The outbox: every automated message passes one gate and is delivered at least once, with a
stable Message-ID, through a real SMTP relay."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from email import message_from_bytes

from gateway import clock
from gateway.outbound import mail_sender as outbox_sender
from tests.helpers import BUSINESS_HOURS, CapturingRelay, Gateway, make_email


def deliver(gateway: Gateway, port: int) -> int:
    outbound = gateway.settings.gateway.outbound
    from dataclasses import replace

    return outbox_sender.send_due(
        gateway.worker.sessions, replace(outbound, enabled=True, relay_port=port), "test"
    )


def test_an_acknowledgement_is_delivered_once_with_its_stable_message_id(
    gateway: Gateway,
    relay: CapturingRelay,
    pin_clock: Callable[[str], datetime],
) -> None:
    pin_clock(BUSINESS_HOURS)
    gateway.ingest(make_email())
    gateway.drain()
    (row,) = gateway.outbox()
    assert deliver(gateway, relay.port) == 1
    assert deliver(gateway, relay.port) == 0  # nothing due any more
    (raw,) = relay.messages
    sent = message_from_bytes(raw)
    assert sent["Message-ID"] == f"<{row.header_message_id}>"
    assert sent["Auto-Submitted"] == "auto-replied"
    assert sent["In-Reply-To"] == "<m1@acme-clinic.example>"
    assert sent["X-Intake-Gateway"] == "test"
    assert [r.status for r in gateway.outbox()] == ["sent"]


def test_a_relay_that_is_down_defers_delivery_with_backoff_and_nothing_is_lost(
    gateway: Gateway,
    relay: CapturingRelay,
    pin_clock: Callable[[str], datetime],
) -> None:
    pin_clock(BUSINESS_HOURS)
    from datetime import UTC

    from sqlalchemy import update

    from gateway.storage.models import OutboxRow

    gateway.ingest(make_email())
    gateway.drain()
    relay_port = relay.port
    relay.stop()
    assert deliver(gateway, relay_port) == 0
    (row,) = gateway.outbox()
    assert row.status == "pending" and row.attempts == 1
    assert "relay unavailable" in row.status_reason
    assert row.next_attempt_at.replace(tzinfo=UTC) > clock.now()
    # The relay is back and the backoff has elapsed.
    relay2 = CapturingRelay()
    relay2.start()
    try:
        with gateway.worker.sessions.begin() as s:
            s.execute(update(OutboxRow).values(next_attempt_at=clock.now()))
        assert deliver(gateway, relay2.port) == 1
        assert len(relay2.messages) == 1
    finally:
        relay2.stop()


def test_a_send_interrupted_by_a_crash_is_sent_again_with_the_same_message_id(
    gateway: Gateway,
    relay: CapturingRelay,
    pin_clock: Callable[[str], datetime],
) -> None:
    """At least once: a row left `sending` by a dead process returns when its lease expires."""
    pin_clock(BUSINESS_HOURS)
    from datetime import timedelta

    from sqlalchemy import update

    from gateway.storage.models import OutboxRow

    gateway.ingest(make_email())
    gateway.drain()
    with gateway.worker.sessions.begin() as s:
        s.execute(
            update(OutboxRow).values(
                status="sending",
                claimed_by="dead",
                claimed_until=clock.now() - timedelta(seconds=1),
            )
        )
    assert deliver(gateway, relay.port) == 1
    (row,) = gateway.outbox()
    assert message_from_bytes(relay.messages[0])["Message-ID"] == f"<{row.header_message_id}>"


def test_we_never_acknowledge_our_own_addresses(gateway: Gateway) -> None:
    gateway.ingest(make_email(sender="support@example.com", message_id="<own@x>"))
    gateway.drain()
    (row,) = gateway.outbox()
    assert row.status == "suppressed"
    assert "our own addresses" in row.status_reason
