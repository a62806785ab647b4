"""Dead letters are visible and recoverable: in /metrics, in the API's admin-only list (over a
real HTTP server), and an admin's audited retry sends the delivery again until it arrives."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import select

from gateway.api import forwarding_routes
from gateway.api.auth import TokenTable, token_digest
from gateway.api.errors import install_error_handlers
from gateway.config.gateway_schema import ApiToken
from gateway.service.metrics import GatewayCollector
from gateway.storage.agent_tables import AuditEntry
from tests.forwarding.support import WEBHOOK, Clock, Receiver, forward, webhook_toml
from tests.helpers import Gateway, free_port, make_email, wait_for

ADMIN, READER = "igw_admin-token-for-tests", "igw_read-token-for-tests"


@dataclass
class Api:
    url: str

    def get(self, path: str, token: str | None = ADMIN, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url + path, headers=headers, params=params, timeout=10)

    def post(self, path: str, token: str | None = ADMIN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.url + path, headers=headers, timeout=10)


def serve(gw: Gateway) -> Iterator[Api]:
    """The forwarding router mounted as the API app mounts it, on a real port."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(forwarding_routes.router, prefix="/api/v1")
    app.state.sessions = gw.worker.sessions
    table = TokenTable.from_config(
        [
            ApiToken(name="root", sha256=token_digest(ADMIN), scopes=("admin",)),
            ApiToken(name="viewer", sha256=token_digest(READER), scopes=("read",)),
        ]
    )
    app.state.token_source = lambda: table
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30)
    try:
        yield Api(f"http://127.0.0.1:{port}/api/v1")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def metric(gw: Gateway, name: str, **labels: str) -> float | None:
    registry = CollectorRegistry()
    registry.register(
        GatewayCollector(gw.worker.sessions, gw.spool, gw.settings.state_dir / "status", dict)
    )
    return registry.get_sample_value(name, labels)


@pytest.fixture
def dead_letter(
    forwarding_gateway: Callable[..., Gateway],
    receivers: Callable[..., Receiver],
    clock: Clock,
) -> Iterator[tuple[Gateway, Receiver, Api]]:
    """A help desk that answered 500 to all 2 attempts of the one delivery: now a dead letter."""
    receiver = receivers(500, 500)
    gw = forwarding_gateway(webhook_toml(WEBHOOK, receiver.url, max_attempts=2))
    gw.ingest(make_email())
    gw.drain()
    for _ in range(3):
        forward(gw, clock)
        clock.advance(1)
    yield from ((gw, receiver, api) for api in serve(gw))


def test_a_dead_letter_is_counted_in_the_metrics_and_listed_to_admins_only(
    dead_letter: tuple[Gateway, Receiver, Api],
) -> None:
    gw, _, api = dead_letter
    assert metric(gw, "gateway_forward_dead_letters", webhook=WEBHOOK) == 1.0
    assert metric(gw, "gateway_forward_deliveries", webhook=WEBHOOK, status="dead") == 1.0
    assert metric(gw, "gateway_forward_deliveries", webhook=WEBHOOK, status="pending") is None
    assert metric(gw, "gateway_forward_pending_changes") == 0.0
    answer = api.get("/forwarding/dead-letters")
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert page["total"] == 1 and (page["limit"], page["offset"]) == (50, 0)
    (item,) = page["items"]
    (ticket,) = gw.tickets()
    assert item["idempotency_key"].startswith(f"{WEBHOOK}:{ticket.reference}:")
    assert (item["status"], item["attempts"], item["last_status"]) == ("dead", 2, 500)
    assert "body" not in item  # customer text never leaves through this list
    assert api.get("/forwarding/dead-letters", webhook="other").json()["total"] == 0
    assert api.get("/forwarding/dead-letters", token=READER).status_code == 403
    assert api.get("/forwarding/dead-letters", token=None).status_code == 401
    bad = api.get("/forwarding/dead-letters", limit=0)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_an_admins_retry_is_audited_and_the_delivery_then_arrives(
    dead_letter: tuple[Gateway, Receiver, Api], clock: Clock
) -> None:
    gw, receiver, api = dead_letter
    (item,) = api.get("/forwarding/dead-letters").json()["items"]
    path = f"/forwarding/dead-letters/{item['id']}/retry"
    assert api.post(path, token=READER).status_code == 403
    answer = api.post(path)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["attempts"]) == ("pending", 0)
    # Not a dead letter any more, or no such delivery: a clear error, nothing changed.
    again = api.post(path)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    missing = api.post("/forwarding/dead-letters/999999/retry")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    with gw.session() as session:
        (entry,) = session.execute(select(AuditEntry)).scalars()
    assert (entry.actor, entry.action, entry.target) == (
        "api:root",
        "forwarding.retry",
        item["idempotency_key"],
    )
    assert entry.before["status"] == "dead" and entry.after["status"] == "pending"

    forward(gw, clock)
    assert [r.answer for r in receiver.requests] == [500, 500, 200]
    assert {r.key for r in receiver.requests} == {item["idempotency_key"]}
    assert api.get("/forwarding/dead-letters").json()["total"] == 0
    assert metric(gw, "gateway_forward_deliveries", webhook=WEBHOOK, status="delivered") == 1.0
