"""Claiming and fan-out on SQLite and PostgreSQL: two senders (two instances) never hold the same
delivery, a lease that runs out (its sender died mid-send) makes it due again, one ticket's
deliveries go out in order, and fan-out makes exactly one delivery per change and webhook."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import select, update

from gateway.outbound import forwarding_sender
from gateway.storage.admin import set_status
from gateway.storage.forwarding_tables import ForwardChange, ForwardDelivery
from tests.forwarding.support import WEBHOOK, Clock, deliveries, webhook_toml
from tests.helpers import Gateway, make_email

GatewayFactory = Callable[..., Gateway]
T = TypeVar("T")
LEASE = timedelta(minutes=5)
# Never contacted by these tests: they claim, they do not send.
UNUSED_URL = "http://127.0.0.1:9/hooks/intake"


def tickets(gw: Gateway, n: int) -> None:
    for i in range(n):
        gw.ingest(
            make_email(
                subject=f"Question {i} about exports",
                body=f"How do I export report number {i}?",
                sender=f"user{i}@example.org",
                message_id=f"<q{i}@example.org>",
            )
        )
    gw.drain()


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Run the calls in threads released together, as two instances would."""
    barrier = threading.Barrier(len(calls))
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Callable[[], T]) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return [r for r in results if r is not None]


def test_two_senders_never_claim_the_same_delivery_until_its_lease_runs_out(
    backend_gateway: GatewayFactory, clock: Clock
) -> None:
    gw = backend_gateway(webhook_toml(WEBHOOK, UNUSED_URL))
    tickets(gw, 6)
    forwarding_sender.fan_out(gw.worker.sessions, gw.settings.forwarding.webhook, clock())
    everything = {d.id for d in deliveries(gw)}
    assert len(everything) == 6

    def claimer(name: str) -> Callable[[], list[int]]:
        return lambda: forwarding_sender.claim(
            gw.worker.sessions, [WEBHOOK], name, clock(), LEASE, limit=4
        )

    a, b = at_once(claimer("gw1"), claimer("gw2"))
    assert not set(a) & set(b)
    assert set(a) | set(b) == everything
    rows = deliveries(gw)
    assert {r.claimed_by for r in rows if r.id in a} == {"gw1"}
    assert {r.claimed_by for r in rows if r.id in b} == {"gw2"}
    assert {r.status for r in rows} == {"sending"}
    # Held while the leases run ...
    assert forwarding_sender.claim(gw.worker.sessions, [WEBHOOK], "gw3", clock(), LEASE) == []
    # ... and due again once they have run out: their senders died mid-send.
    clock.advance(LEASE.total_seconds() + 1)
    again = forwarding_sender.claim(gw.worker.sessions, [WEBHOOK], "gw3", clock(), LEASE, limit=9)
    assert set(again) == everything


def test_one_tickets_deliveries_go_out_in_order(
    backend_gateway: GatewayFactory, clock: Clock
) -> None:
    gw = backend_gateway(webhook_toml(WEBHOOK, UNUSED_URL))
    tickets(gw, 1)
    sessions = gw.worker.sessions
    hooks = gw.settings.forwarding.webhook
    forwarding_sender.fan_out(sessions, hooks, clock())
    (reference,) = [t.reference for t in gw.tickets()]
    with gw.session() as session:
        set_status(session, reference, "waiting", actor="dana", reason="asked")
    forwarding_sender.fan_out(sessions, hooks, clock())
    created, updated = deliveries(gw)
    assert (created.event, updated.event) == ("created", "updated")
    # The creation failed once and waits out its backoff: the update must not overtake it.
    with sessions.begin() as session:
        session.execute(
            update(ForwardDelivery)
            .where(ForwardDelivery.id == created.id)
            .values(next_attempt_at=clock() + timedelta(minutes=1))
        )
    assert forwarding_sender.claim(sessions, [WEBHOOK], "gw1", clock(), LEASE) == []
    clock.advance(61)
    assert forwarding_sender.claim(sessions, [WEBHOOK], "gw1", clock(), LEASE, limit=5) == [
        created.id
    ]
    # A dead letter does not hold the ticket's later deliveries back for ever.
    with sessions.begin() as session:
        session.execute(
            update(ForwardDelivery).where(ForwardDelivery.id == created.id).values(status="dead")
        )
    assert forwarding_sender.claim(sessions, [WEBHOOK], "gw1", clock(), LEASE) == [updated.id]


def test_fan_out_by_two_instances_makes_one_delivery_per_change_and_webhook(
    backend_gateway: GatewayFactory, clock: Clock
) -> None:
    gw = backend_gateway(
        webhook_toml(WEBHOOK, UNUSED_URL), webhook_toml("billing-desk", UNUSED_URL)
    )
    tickets(gw, 5)
    hooks = gw.settings.forwarding.webhook

    def fan_out() -> int:
        return forwarding_sender.fan_out(gw.worker.sessions, hooks, clock(), limit=3)

    with gw.session() as session:
        journalled = len(list(session.execute(select(ForwardChange.id)).scalars()))
    consumed = sum(at_once(fan_out, fan_out))
    while n := fan_out():  # whatever the two left over
        consumed += n
    assert consumed == journalled  # every journal row taken exactly once
    rows = deliveries(gw)
    assert len(rows) == 10 and len({r.idempotency_key for r in rows}) == 10
    assert {(r.webhook, r.reference) for r in rows} == {
        (hook, t.reference) for hook in (WEBHOOK, "billing-desk") for t in gw.tickets()
    }
    with gw.session() as session:
        assert session.execute(select(ForwardChange)).first() is None


def test_with_no_webhook_the_journal_is_consumed_and_nothing_is_delivered(
    backend_gateway: GatewayFactory, clock: Clock
) -> None:
    gw = backend_gateway()
    tickets(gw, 5)
    sessions = gw.worker.sessions
    assert forwarding_sender.fan_out(sessions, [], clock(), limit=3) == 3
    assert forwarding_sender.fan_out(sessions, [], clock(), limit=3) == 2
    assert forwarding_sender.fan_out(sessions, [], clock()) == 0
    with gw.session() as session:
        assert session.execute(select(ForwardChange)).first() is None
    assert deliveries(gw) == []
