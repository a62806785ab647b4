"""Merge and duplicate: one customer request stays one ticket (and is billed once); the folded
ticket closes with a link, its story moves (merge) or stays (duplicate), the customer's next
reply finds the surviving ticket, and impossible folds are refused with 409 or 422."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from gateway.emergency import ledger as billing
from gateway.privacy.audit import Actor
from gateway.storage.agent_tables import AuditEntry
from gateway.storage.models import Ticket
from tests.api.conftest import ADMIN_TOKEN, ApiServer
from tests.helpers import make_email


def test_merging_moves_the_story_closes_the_ticket_and_threads_replies_to_the_survivor(
    api: ApiServer,
) -> None:
    merged = api.post(
        "/api/v1/tickets/T-000003/merge", {"into": "T-000001", "reason": "same customer"}
    )
    assert merged.status == 200, merged.body
    result = merged.json()
    assert result["ticket"]["status"] == "closed" and result["ticket"]["message_count"] == 0
    assert result["target"]["message_count"] == 2
    assert result["credit"]["credited"] is False
    assert "nothing was billed" in result["credit"]["note"]

    survivor = api.get("/api/v1/tickets/T-000001").json()
    assert [m["subject"] for m in survivor["messages"]] == ["Export question", "Feature idea"]
    assert survivor["links"]["merged_from"] == ["T-000003"]
    folded = api.get("/api/v1/tickets/T-000003").json()
    assert folded["messages"] == [] and folded["links"]["merged_into"] == "T-000001"

    # The customer writes again in the old thread: it lands on the survivor, not a new ticket.
    api.ingest(
        make_email(
            subject="Re: Feature idea",
            body="Any news?",
            sender="someone@unknown.example",
            message_id="<again@x>",
            In_Reply_To="<s3@x>",
        )
    )
    assert len(api.gateway.tickets()) == 4
    assert api.get("/api/v1/tickets/T-000001").json()["messages"][-1]["text"].startswith("Any")

    with api.gateway.session() as session:
        actions = [
            (e.action, e.target, e.actor)
            for e in session.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars()
        ]
    assert actions == [
        ("ticket.status", "T-000003", "api:agent"),
        ("ticket.merge", "T-000003", "api:agent"),
    ]


def test_a_duplicate_is_closed_with_its_messages_and_linked_to_the_original(
    sqlite_api: ApiServer,
) -> None:
    api = sqlite_api
    marked = api.post("/api/v1/tickets/T-000004/duplicate", {"of": "T-000001"})
    assert marked.status == 200, marked.body
    folded = api.get("/api/v1/tickets/T-000004").json()
    assert folded["status"] == "closed" and len(folded["messages"]) == 1
    assert folded["links"]["duplicate_of"] == "T-000001"
    assert api.get("/api/v1/tickets/T-000001").json()["links"]["duplicates"] == ["T-000004"]
    assert "T-000004" not in [t["reference"] for t in api.get("/api/v1/tickets").json()["tickets"]]


def test_impossible_folds_are_refused_and_change_nothing(sqlite_api: ApiServer) -> None:
    def fold(ref: str, into: str) -> Any:
        return sqlite_api.post(f"/api/v1/tickets/{ref}/merge", {"into": into})

    itself = fold("T-000001", "T-000001")
    assert itself.status == 409 and itself.json()["error"]["code"] == "conflict"
    unknown = fold("T-000001", "T-000404")
    assert unknown.status == 422 and "T-000404" in unknown.json()["error"]["message"]
    assert fold("T-000404", "T-000001").status == 404
    assert fold("T-000003", "T-000001").status == 200
    twice = fold("T-000003", "T-000002")
    assert (
        twice.status == 409 and "already merged into T-000001" in twice.json()["error"]["message"]
    )
    onward = sqlite_api.post("/api/v1/tickets/T-000004/duplicate", {"of": "T-000003"})
    assert onward.status == 409 and "use that ticket" in onward.json()["error"]["message"]
    assert onward.json()["error"]["message"].startswith("T-000003 was itself merged into T-000001")
    with sqlite_api.gateway.session() as session:
        statuses = {
            ref: status for ref, status in session.execute(select(Ticket.reference, Ticket.status))
        }
    assert statuses == {
        "T-000001": "new",
        "T-000002": "new",
        "T-000003": "closed",
        "T-000004": "new",
    }


def test_a_fold_asks_billing_to_credit_the_folded_incident_in_the_same_transaction(
    sqlite_api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int, str, Actor, str]] = []

    def credit_incident(
        session: Any, ticket_id: int, kind: str, *, actor: Actor, at: datetime, reason: str
    ) -> str | None:
        # Inside the fold's transaction: the ticket is already closed there.
        assert session.get(Ticket, ticket_id).status == "closed"
        asked.append((ticket_id, kind, actor, reason))
        return None

    monkeypatch.setattr(billing, "credit_incident", credit_incident)
    merged = sqlite_api.post(
        "/api/v1/tickets/T-000003/merge", {"into": "T-000001", "reason": "same issue"}
    )
    assert merged.json()["credit"] == {
        "credited": True,
        "note": "its emergency incident was credited",
    }
    sqlite_api.post("/api/v1/tickets/T-000004/duplicate", {"of": "T-000001"})
    assert asked == [
        (3, "merged", Actor("agent", "api"), "merged into T-000001: same issue"),
        (4, "duplicate", Actor("agent", "api"), "duplicate of T-000001"),
    ]


def test_the_billing_export_answers_json_and_csv_for_admins(sqlite_api: ApiServer) -> None:
    query = "since=2026-01-01T00:00:00Z&until=2027-01-01T00:00:00Z"
    exported = sqlite_api.get(f"/api/v1/billing/export?{query}", token=ADMIN_TOKEN)
    assert exported.status == 200
    assert exported.json() == {
        "since": "2026-01-01T00:00:00Z",
        "until": "2027-01-01T00:00:00Z",
        "incidents": [],
        "totals": [],
    }
    csv = sqlite_api.get(f"/api/v1/billing/export?{query}&format=csv", token=ADMIN_TOKEN)
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.body.decode().splitlines()[0].startswith("incident,opened_at,account")
    assert (
        sqlite_api.get(
            "/api/v1/billing/export?since=2026-01-01T00:00:00Z", token=ADMIN_TOKEN
        ).status
        == 422
    )
    backwards = "since=2027-01-01T00:00:00Z&until=2026-01-01T00:00:00Z"
    assert sqlite_api.get(f"/api/v1/billing/export?{backwards}", token=ADMIN_TOKEN).status == 422
