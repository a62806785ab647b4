"""Who may do what: no token -> 401 everywhere but the open endpoints; a read token changes
nothing (403 on every operation that needs more, enumerated from the OpenAPI document so a new
endpoint is covered the day it is added); tokens never reach a log line."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.api.auth import Principal, TokenTable, implied_scopes, token_digest
from gateway.config.gateway_schema import ApiToken
from gateway.storage.agent_tables import AuditEntry
from tests.api.conftest import (
    ADMIN_TOKEN,
    READ_TOKEN,
    WRITE_TOKEN,
    ApiServer,
    seed,
)

SAMPLE_PATH_VALUES = {
    "ref": "T-000001",
    "message_id": "1",
    "attachment_id": "1",
    "entry_id": "00000001763900000000-0123456789ab",
    "delivery_id": "1",
}


def operations(server: ApiServer) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, concrete path, operation) for every documented operation under /api/v1."""
    doc = server.get("/openapi.json", token=READ_TOKEN).json()
    found = []
    for path, item in doc["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PATH_VALUES[m.group(1)], path)
        for method, op in item.items():
            found.append((method.upper(), concrete, op))
    assert len(found) >= 18
    return found


def is_error(reply: Any, status: int, code: str) -> bool:
    body = reply.json()
    return (
        reply.status == status
        and set(body) == {"error"}
        and body["error"]["code"] == code
        and isinstance(body["error"]["message"], str)
    )


def test_scopes_are_ordered_admin_implies_write_implies_read() -> None:
    assert implied_scopes(["admin"]) == {"admin", "write", "read"}
    assert implied_scopes(["write"]) == {"write", "read"}
    assert implied_scopes(["read"]) == {"read"}
    table = TokenTable.from_config(
        [
            ApiToken("ann", token_digest("secret-a"), ("read",)),
            ApiToken("bob", token_digest("secret-b"), ("admin",)),
        ]
    )
    assert table.authenticate("secret-a") == Principal("ann", frozenset({"read"}))
    bob = table.authenticate("secret-b")
    assert bob is not None and bob.can("write") and bob.can("admin")
    assert table.authenticate("secret-c") is None
    assert table.authenticate("") is None
    assert table.authenticate(token_digest("secret-a")) is None  # the hash is not the token


def test_without_a_token_every_operation_is_401_and_only_the_open_endpoints_answer(
    sqlite_api: ApiServer,
) -> None:
    for method, path, _ in operations(sqlite_api):
        for token in (None, "not-a-configured-token"):
            reply = sqlite_api.call(method, path, token=token, body={} if method != "GET" else None)
            assert is_error(reply, 401, "unauthorized"), (method, path, reply.status, reply.body)
            assert reply.headers["www-authenticate"] == "Bearer"
    # Another scheme, or a token in the query string, is no token at all.
    basic = sqlite_api.call("GET", "/api/v1/tickets", headers={"Authorization": "Basic YTpi"})
    assert basic.status == 401
    assert sqlite_api.call("GET", f"/api/v1/tickets?access_token={READ_TOKEN}").status == 401
    assert sqlite_api.get("/openapi.json", token=None).status == 401
    # Open: liveness, readiness, metrics (by default), the queue page's login form.
    assert sqlite_api.get("/healthz", token=None).body == b"ok\n"
    assert sqlite_api.get("/readyz", token=None).status == 200
    assert b"gateway_database_up" in sqlite_api.get("/metrics", token=None).body
    login = sqlite_api.get("/queue/login", token=None)
    assert login.status == 200 and b"<form" in login.body
    # Unknown paths get the same error body.
    assert is_error(sqlite_api.get("/api/v1/nothing-here"), 404, "not_found")


def test_metrics_can_require_a_read_token(sqlite_api_config: Callable[..., Path]) -> None:
    server = ApiServer(sqlite_api_config(api__metrics_require_token=True)).start()
    try:
        assert is_error(server.get("/metrics", token=None), 401, "unauthorized")
        assert server.get("/metrics", token=READ_TOKEN).status == 200
        assert server.get("/healthz", token=None).status == 200
    finally:
        server.stop()


def state(server: ApiServer) -> list[dict[str, Any]]:
    """Every ticket as the API shows it, minus the one field that moves with the clock."""
    tickets: list[dict[str, Any]] = server.get("/api/v1/tickets?limit=500&" + ALL).json()["tickets"]
    for ticket in tickets:
        ticket["sla"].pop("first_response_seconds_left")
    return tickets


ALL = "&".join(f"status={s}" for s in ("new", "open", "waiting", "resolved", "closed", "reopened"))


def test_a_read_token_is_refused_every_change_and_nothing_changes(api: ApiServer) -> None:
    before = state(api)
    checked = 0
    for method, path, op in operations(api):
        if method != "GET":
            assert op["x-scope"] in ("write", "admin"), f"{method} {path} is not protected"
        if op["x-scope"] == "read":
            continue
        reply = api.call(method, path, token=READ_TOKEN, body={} if method != "GET" else None)
        assert is_error(reply, 403, "forbidden"), (method, path, reply.status, reply.body)
        checked += 1
    assert checked >= 12
    assert state(api) == before
    with api.gateway.session() as session:
        assert session.execute(select(AuditEntry)).first() is None


def test_a_write_token_cannot_use_admin_operations(sqlite_api: ApiServer) -> None:
    admin_ops = [(m, p) for m, p, op in operations(sqlite_api) if op["x-scope"] == "admin"]
    assert {"/api/v1/audit", "/api/v1/quarantine", "/api/v1/spool"} <= {p for _, p in admin_ops}
    for method, path in admin_ops:
        reply = sqlite_api.call(
            method, path, token=WRITE_TOKEN, body={} if method != "GET" else None
        )
        assert is_error(reply, 403, "forbidden"), (method, path)
    assert sqlite_api.get("/api/v1/audit", token=ADMIN_TOKEN).status == 200


@pytest.fixture
def logged_api(
    sqlite_api_config: Callable[..., Path], all_logs: list[str]
) -> Iterator[tuple[ApiServer, list[str]]]:
    server = ApiServer(sqlite_api_config(), access_log=True).start()
    seed(server)
    yield server, all_logs
    server.stop()


def test_tokens_never_appear_in_any_log_line(
    logged_api: tuple[ApiServer, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, lines = logged_api
    wrong = "igw_not-configured-0000111122223333"
    server.get("/api/v1/tickets", token=READ_TOKEN)
    server.get("/api/v1/tickets/T-000001", token=ADMIN_TOKEN)
    server.post("/api/v1/tickets/T-000001/status", {"status": "waiting"}, token=WRITE_TOKEN)
    server.post("/api/v1/tickets/T-000001/status", {"status": "open"}, token=READ_TOKEN)  # 403
    server.get("/api/v1/tickets", token=wrong)  # 401
    server.call("GET", "/api/v1/tickets", headers={"Authorization": f"Token {WRITE_TOKEN}"})
    server.post("/api/v1/tickets/T-000001/replies", {"text": 5}, token=WRITE_TOKEN)  # 422
    server.get("/openapi.json", token=READ_TOKEN)

    # A failure inside a request is logged with its traceback — still without the token.
    from gateway.api import routes_tickets

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(routes_tickets, "list_tickets", broken)
    failed = server.get("/api/v1/tickets", token=WRITE_TOKEN)
    assert failed.status == 500 and failed.json()["error"]["code"] == "internal"

    text = "\n".join(lines)
    # The logs were captured at all: uvicorn's access log and our error log are in them.
    assert '"GET /api/v1/tickets HTTP/1.1" 401' in text
    assert '"POST /api/v1/tickets/T-000001/status HTTP/1.1" 403' in text
    assert "simulated failure" in text and "Traceback" in text
    for token in (READ_TOKEN, WRITE_TOKEN, ADMIN_TOKEN, wrong):
        assert token not in text
        assert token[-16:] not in text  # not even a recognisable part


def test_an_oversized_or_unmeasured_body_is_refused_before_anything_reads_it(
    sqlite_api: ApiServer,
) -> None:
    # Announce 2 MiB, send none of it, no token: the answer comes from the headers alone.
    announced = http.client.HTTPConnection("127.0.0.1", sqlite_api.port, timeout=10)
    announced.putrequest("POST", "/api/v1/tickets/T-000001/replies")
    announced.putheader("Content-Type", "application/json")
    announced.putheader("Content-Length", str(2 * 1024 * 1024))
    announced.endheaders()
    refused = announced.getresponse()
    assert refused.status == 413
    assert json.loads(refused.read())["error"]["code"] == "too_large"
    announced.close()
    connection = http.client.HTTPConnection("127.0.0.1", sqlite_api.port, timeout=10)
    connection.request(
        "POST",
        "/api/v1/tickets/T-000001/replies",
        body=iter([b'{"text": "hi"}']),
        headers={"Authorization": f"Bearer {WRITE_TOKEN}", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 411
    assert json.loads(response.read())["error"]["code"] == "length_required"
    connection.close()
