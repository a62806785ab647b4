"""Delivery: signed, at least once, retried with backoff, dead-lettered after max_attempts,
filtered by queue and event — the real sender against real receivers, on SQLite and PostgreSQL,
on a frozen clock that the tests move past each backoff."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from gateway.outbound import forwarding_sender
from gateway.storage.admin import set_status
from gateway.storage.queries import as_utc
from tests.forwarding.support import (
    SECRET,
    WEBHOOK,
    Clock,
    Receiver,
    deliveries,
    forward,
    readme_verify,
    webhook_toml,
)
from tests.helpers import BUSINESS_HOURS, Gateway, make_email

GatewayFactory = Callable[..., Gateway]
ReceiverFactory = Callable[..., Receiver]


def passes(gw: Gateway, clock: Clock, n: int, step: float = 1.0) -> None:
    for _ in range(n):
        forward(gw, clock)
        clock.advance(step)  # past any backoff of these tests' webhooks (at most 0.2 s)


def test_a_delivery_failing_three_times_reaches_the_receiver_once_with_one_key(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    receiver = receivers(500, "drop", 503)
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url))
    gw.ingest(make_email())
    gw.drain()
    passes(gw, clock, 6)

    assert [r.answer for r in receiver.requests] == [500, "drop", 503, 200]
    assert len({r.key for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    verify = readme_verify()
    assert all(verify(SECRET.encode(), r.headers, r.body) for r in receiver.requests)
    (row,) = deliveries(gw)
    assert (row.status, row.attempts, row.last_status) == ("delivered", 4, 200)
    assert row.body == ""  # the receiver has it; the customer's text is not kept twice


def test_each_failed_attempt_waits_longer_before_the_next(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    receiver = receivers(after=500)
    hook = webhook_toml(WEBHOOK, receiver.url, backoff_seconds=10.0, max_backoff_seconds=1000.0)
    gw = forwarding_gateway(hook)
    gw.ingest(make_email())
    gw.drain()
    waits = []
    for _ in range(3):
        forward(gw, clock)
        (row,) = deliveries(gw)
        due = as_utc(row.next_attempt_at)
        assert due is not None
        waits.append(due - clock.now)
        forward(gw, clock)  # not due yet: nothing is sent
        clock.advance(waits[-1].total_seconds())
    assert len(receiver.requests) == 3
    seconds = [w.total_seconds() for w in waits]
    # base 10 s doubling, each with up to half of it as jitter: [5,10], [10,20], [20,40]
    assert 5 <= seconds[0] <= 10 and 10 <= seconds[1] <= 20 and 20 <= seconds[2] <= 40


def test_a_status_change_is_delivered_as_an_update_with_its_own_key(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    receiver = receivers()
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url))
    gw.ingest(make_email())
    gw.drain()
    passes(gw, clock, 1)
    (created,) = receiver.requests
    reference = created.json["ticket"]["reference"]
    with gw.session() as session:
        assert set_status(session, reference, "waiting", actor="dana", reason="asked") is None
    passes(gw, clock, 1)

    (_, updated) = receiver.requests
    assert updated.headers["X-Intake-Event"] == "ticket.updated"
    assert updated.json["event"] == "ticket.updated"
    assert updated.json["ticket"]["status"] == "waiting"
    assert updated.key != created.key
    assert updated.json["sequence"] > created.json["sequence"]
    assert readme_verify()(SECRET.encode(), updated.headers, updated.body)


def test_a_follow_up_from_the_customer_is_delivered_as_an_update(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    receiver = receivers()
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url))
    gw.ingest(make_email())
    gw.drain()
    passes(gw, clock, 1)
    gw.ingest(
        make_email(
            subject="Re: Printer offline",
            body="Still broken.",
            message_id="<m2@acme-clinic.example>",
            In_Reply_To="<m1@acme-clinic.example>",
        )
    )
    gw.drain()
    passes(gw, clock, 1)
    events = [r.json["event"] for r in receiver.requests]
    assert events == ["ticket.created", "ticket.updated"]
    assert receiver.requests[1].json["ticket"]["message_count"] == 2


def test_a_webhook_receives_only_the_queues_and_events_it_names(
    forwarding_gateway: GatewayFactory,
    receivers: ReceiverFactory,
    clock: Clock,
    pin_clock: Callable[[str], datetime],
) -> None:
    pin_clock(BUSINESS_HOURS)
    everything, billing = receivers(), receivers()
    gw = forwarding_gateway(
        webhook_toml(WEBHOOK, everything.url),
        webhook_toml("billing-desk", billing.url, queues=["billing"], events=["created"]),
    )
    gw.ingest(make_email())  # a printer that stopped working: queue "incidents"
    gw.ingest(
        make_email(
            subject="Invoice 1042 looks wrong",
            body="We were charged twice on the last invoice.",
            sender="sam@bluebird.example",
            message_id="<inv-1@bluebird.example>",
        )
    )
    gw.drain()
    passes(gw, clock, 1)
    assert sorted(r.json["ticket"]["queue"] for r in everything.requests) == [
        "billing",
        "incidents",
    ]
    assert [r.json["ticket"]["queue"] for r in billing.requests] == ["billing"]
    # Each webhook signs with its own secret.
    assert readme_verify()(b"another-secret", billing.requests[0].headers, billing.requests[0].body)
    # The billing desk asked for new tickets only: a status change goes to the other one alone.
    reference = billing.requests[0].json["ticket"]["reference"]
    with gw.session() as session:
        set_status(session, reference, "resolved", actor="dana", reason="refunded")
    passes(gw, clock, 1)
    assert len(billing.requests) == 1
    assert everything.requests[-1].json["event"] == "ticket.updated"
    assert everything.requests[-1].json["ticket"]["reference"] == reference


def test_after_max_attempts_a_delivery_is_a_dead_letter_and_sending_stops(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    receiver = receivers(after=502)
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url, max_attempts=3))
    gw.ingest(make_email())
    gw.drain()
    passes(gw, clock, 6)
    assert len(receiver.requests) == 3
    (row,) = deliveries(gw)
    assert (row.status, row.attempts, row.last_status) == ("dead", 3, 502)
    assert "HTTP 502" in row.last_error and row.body  # kept for an admin's retry


def test_a_receiver_that_never_answers_is_a_failed_attempt_after_the_timeout(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    receiver = receivers("hang", hang_seconds=3.0)
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url, timeout_seconds=0.3))
    gw.ingest(make_email())
    gw.drain()
    passes(gw, clock, 1)
    (row,) = deliveries(gw)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, None)
    assert "timed out after 0.3s" in row.last_error
    passes(gw, clock, 1)
    assert [r.answer for r in receiver.requests] == ["hang", 200]
    assert deliveries(gw)[0].status == "delivered"


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    elsewhere = receivers()
    receiver = receivers(("redirect", elsewhere.url))
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url))
    gw.ingest(make_email())
    gw.drain()
    passes(gw, clock, 1)
    assert elsewhere.requests == []  # a signed ticket never goes to a host nobody configured
    (row,) = deliveries(gw)
    assert (row.status, row.last_status) == ("pending", 307)


def test_without_its_secret_a_delivery_is_never_sent_unsigned(
    forwarding_gateway: GatewayFactory,
    receivers: ReceiverFactory,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = receivers()
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url))
    monkeypatch.delenv("GATEWAY_FORWARD_SECRET_HELPDESK")  # gone after the config was loaded
    gw.ingest(make_email())
    gw.drain()
    passes(gw, clock, 1)
    assert receiver.requests == []
    (row,) = deliveries(gw)
    assert row.status == "pending" and "GATEWAY_FORWARD_SECRET_HELPDESK" in row.last_error


def test_a_rejected_or_discarded_message_forwards_nothing(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    receiver = receivers()
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url))
    gw.ingest(make_email(sender="MAILER-DAEMON@mx.example", Auto_Submitted="auto-replied"))
    gw.drain()
    passes(gw, clock, 1)
    assert gw.tickets() == [] and receiver.requests == [] and deliveries(gw) == []


def test_erasure_deletes_undelivered_deliveries_and_delivered_ones_keep_no_body(
    forwarding_gateway: GatewayFactory, receivers: ReceiverFactory, clock: Clock
) -> None:
    receiver = receivers(after=200)
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url))
    gw.ingest(make_email())
    gw.drain()
    passes(gw, clock, 1)  # the creation is delivered
    receiver.after = 500
    (ticket,) = gw.tickets()
    with gw.session() as session:
        set_status(session, ticket.reference, "waiting", actor="dana", reason="asked")
    passes(gw, clock, 1)  # the update is not: pending, with the customer's text in its body
    assert [(d.status, bool(d.body)) for d in deliveries(gw)] == [
        ("delivered", False),
        ("pending", True),
    ]
    with gw.worker.sessions.begin() as session:
        assert forwarding_sender.erase_undelivered(session, [ticket.id]) == 1
    assert [d.status for d in deliveries(gw)] == ["delivered"]
