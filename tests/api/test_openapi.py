"""The OpenAPI document is valid and true: a bounded schemathesis run against the live app (real
uvicorn, real socket, seeded tickets, an admin token) finds no 5xx and no response that breaks
the document — status codes, content types and bodies."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import ADMIN_TOKEN, READ_TOKEN, ApiServer

# Per operation; ~20 operations. Fixed, and derandomized (a seeded, repeatable run).
MAX_EXAMPLES = 8


def quarantine_one(server: ApiServer) -> str:
    """A message the worker gave up on, as `gateway quarantine list` would show it."""
    entry_id = server.gateway.ingest(b"Subject: poison\n\nunparseable on purpose\n")
    entry = server.gateway.spool.claim()
    assert entry is not None and entry.id == entry_id
    server.gateway.spool.quarantine(entry, stage="parse", error="test: poison message")
    return entry_id


def openapi(server: ApiServer) -> dict[str, Any]:
    reply = server.get("/openapi.json", token=READ_TOKEN)
    assert reply.status == 200
    doc: dict[str, Any] = reply.json()
    return doc


def test_the_openapi_document_validates_and_names_each_operations_scope(
    sqlite_api: ApiServer,
) -> None:
    doc = openapi(sqlite_api)
    validate(doc)  # raises on any violation of the OpenAPI 3.1 specification
    operations = [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if path.startswith("/api/v1/")
    ]
    assert len(operations) >= 18
    for path, method, op in operations:
        assert op.get("x-scope") in ("read", "write", "admin"), (method, path)
        assert op.get("security") == [{"bearer": []}], (method, path)
        if method != "get":
            assert op["x-scope"] in ("write", "admin"), f"{method} {path} changes with read"
        for status in ("401", "403", "4XX", "5XX"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }


@pytest.mark.timeout(150)
def test_a_bounded_schemathesis_run_finds_no_server_error_and_no_schema_violation(
    sqlite_api: ApiServer,
) -> None:
    quarantined = quarantine_one(sqlite_api)
    # Beside freely generated values, path parameters that name things that exist: the seeded
    # tickets, T-000004's message 4 and attachment 1, a quarantined spool entry.
    known: dict[str, list[dict[str, Any]]] = {
        "ref": [{"ref": f"T-00000{i}"} for i in (1, 2, 3, 4)],
        "message_id": [{"ref": "T-000004", "message_id": 4}],
        "attachment_id": [{"ref": "T-000004", "attachment_id": 1}],
        "entry_id": [{"entry_id": quarantined}],
    }
    schema = schemathesis.openapi.from_dict(openapi(sqlite_api))
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    tested: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        fixed = next(
            (known[n] for n in ("message_id", "attachment_id", "entry_id", "ref") if n in names), []
        )
        strategy = st.one_of(
            operation.as_strategy(),
            *(operation.as_strategy(path_parameters=values) for values in fixed),
        )

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            response = case.call(base_url=sqlite_api.base, headers=headers, timeout=30)
            case.validate_response(response, checks=checks)

        run()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /api/v1/tickets/{ref}/replies" in tested
    assert "GET /api/v1/tickets" in tested
