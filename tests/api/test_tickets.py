"""Working tickets through the API: the queue in THE queue order with filters, pages and
polling; a ticket's whole story; downloads with safe names; status, first response and severity
changes, each audited in the same transaction as the change."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from gateway import clock
from gateway.api.views import content_disposition, safe_content_type, safe_filename
from gateway.cli.main import main as cli_main
from gateway.storage.agent_tables import AuditEntry
from gateway.storage.models import AttachmentRecord, Message, SeverityLabel, Ticket, TicketPause
from gateway.storage.queries import list_queue
from tests.api.conftest import ADMIN_TOKEN, WRITE_TOKEN, ApiServer


def refs(reply: Any) -> list[str]:
    return [t["reference"] for t in reply.json()["tickets"]]


def audit(server: ApiServer, **where: str) -> list[AuditEntry]:
    with server.gateway.session() as session:
        query = select(AuditEntry).order_by(AuditEntry.id)
        for key, value in where.items():
            query = query.where(getattr(AuditEntry, key) == value)
        return list(session.execute(query).scalars())


def ticket(server: ApiServer, ref: str) -> Ticket:
    with server.gateway.session() as session:
        found = session.execute(select(Ticket).where(Ticket.reference == ref)).scalar_one()
        session.expunge(found)
        return found


# ---- the queue ------------------------------------------------------------------------------


def test_the_queue_is_listed_in_the_one_queue_order_with_filters_and_pages(api: ApiServer) -> None:
    listed = api.get("/api/v1/tickets")
    assert listed.status == 200
    with api.gateway.session() as session:
        assert refs(listed) == [t.reference for t in list_queue(session)]
    assert refs(listed)[0] == "T-000002"  # the outage jumps the queue
    assert [t["position"] for t in listed.json()["tickets"]] == [1, 2, 3, 4]
    assert listed.json()["total"] == 4

    assert refs(api.get("/api/v1/tickets?level=urgent")) == ["T-000002"]
    assert refs(api.get("/api/v1/tickets?jump_queue=true")) == ["T-000002"]
    assert "T-000002" not in refs(api.get("/api/v1/tickets?jump_queue=false"))
    assert set(refs(api.get("/api/v1/tickets?plan=basic"))) == {"T-000001", "T-000004"}
    assert refs(api.get("/api/v1/tickets?queue=incidents&queue=nowhere")) == ["T-000002"]
    assert len(refs(api.get("/api/v1/tickets?held=false&emergency=false"))) == 4
    assert refs(api.get("/api/v1/tickets?held=true")) == []
    assert refs(api.get("/api/v1/tickets?status=closed")) == []

    # Breached: judged at the API's clock. Nothing is late now; a week on, everything is.
    assert refs(api.get("/api/v1/tickets?breached=true")) == []
    api.now = clock.now() + timedelta(days=30)
    late = api.get("/api/v1/tickets?breached=true")
    assert refs(late) == refs(listed)
    assert all(t["sla"]["first_response_breached"] for t in late.json()["tickets"])
    api.now = None

    # Pages: the same order, cut by an opaque cursor.
    first = api.get("/api/v1/tickets?limit=3").json()
    assert [t["reference"] for t in first["tickets"]] == refs(listed)[:3]
    second = api.get(f"/api/v1/tickets?limit=3&cursor={first['next_cursor']}").json()
    assert [t["reference"] for t in second["tickets"]] == refs(listed)[3:]
    assert second["next_cursor"] is None and second["tickets"][0]["position"] == 4

    # Polling: only what changed since.
    since = api.get("/api/v1/tickets").json()["server_time"]
    assert api.post("/api/v1/tickets/T-000003/status", {"status": "waiting"}).status == 200
    changed = api.get(f"/api/v1/tickets?updated_since={since}")
    assert refs(changed) == ["T-000003"]
    # The same instant written with another offset means the same thing.
    east = datetime.fromisoformat(since).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert refs(api.get(f"/api/v1/tickets?updated_since={quote(east)}")) == ["T-000003"]


def test_bad_listing_parameters_get_a_clear_422(sqlite_api: ApiServer) -> None:
    for query, where in (
        ("limit=0", "query.limit"),
        ("limit=x", "query.limit"),
        ("status=sleeping", "query.status.0"),
        ("updated_since=yesterday", "query.updated_since"),
    ):
        reply = sqlite_api.get(f"/api/v1/tickets?{query}")
        assert reply.status == 422, query
        error = reply.json()["error"]
        assert error["code"] == "invalid_request"
        assert error["fields"][0]["location"] == where
    naive = sqlite_api.get("/api/v1/tickets?updated_since=2026-01-01T00:00:00")
    assert naive.status == 422 and "timezone" in naive.json()["error"]["message"]
    forged = sqlite_api.get("/api/v1/tickets?cursor=b206LTE")
    assert forged.status == 422 and "cursor" in forged.json()["error"]["message"]


# ---- one ticket -----------------------------------------------------------------------------


def test_a_ticket_shows_its_messages_explanation_decisions_sla_and_downloads(
    sqlite_api: ApiServer,
) -> None:
    shown = sqlite_api.get("/api/v1/tickets/T-000004")
    assert shown.status == 200
    data = shown.json()
    assert data["schema"] == 1 and data["subject"] == "Report attached"
    assert data["explanation"]["classifier"]["severity"] == data["severity"]
    assert {d["stage"] for d in data["decisions"]} >= {"identify", "thread", "classify"}
    assert data["sla"]["first_response_due"] == data["first_response_due"]
    assert data["sla"]["first_response_at"] is None and data["resolution"] is None
    assert data["outbox"][0]["kind"] == "acknowledgement"
    assert data["billing"] is not None
    (message,) = data["messages"]
    assert message["direction"] == "in" and message["from"] == "sam@bluebird.example"
    (attachment,) = message["attachments"]
    assert attachment["stored"] is True and attachment["size"] == 16

    got = sqlite_api.get(attachment["download_url"])
    assert got.status == 200 and got.body == b"attached report\n"
    assert got.headers["content-type"].startswith("text/plain")
    assert got.headers["content-disposition"].startswith("attachment; filename=")
    assert "/" not in got.headers["content-disposition"].split("filename=", 1)[1].split(";")[0]
    assert got.headers["x-content-type-options"] == "nosniff"

    raw = sqlite_api.get(message["raw_url"])
    assert raw.status == 200 and raw.headers["content-type"] == "message/rfc822"
    assert hashlib.sha256(raw.body).hexdigest() == message["raw_sha256"]  # byte for byte
    assert b"Message-ID: <s4@x>" in raw.body
    assert 'filename="T-000004-message-4.eml"' in raw.headers["content-disposition"]

    # Another ticket's attachment, an unknown ticket, a message of another ticket: 404.
    assert sqlite_api.get(f"/api/v1/tickets/T-000001/attachments/{attachment['id']}").status == 404
    assert sqlite_api.get("/api/v1/tickets/T-000001/messages/4/raw").status == 404
    missing = sqlite_api.get("/api/v1/tickets/T-999999")
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"
    assert sqlite_api.get("/api/v1/tickets/..%2F..%2Fetc").status == 404

    # Content removed by retention: 410, said plainly.
    blob = sqlite_api.ctx.blobs.path(attachment["sha256"])
    blob.unlink()
    gone = sqlite_api.get(attachment["download_url"])
    assert gone.status == 410 and gone.json()["error"]["code"] == "gone"


def test_a_hostile_attachment_name_and_type_cannot_escape_the_download_headers(
    sqlite_api: ApiServer,
) -> None:
    with sqlite_api.gateway.session() as session:
        session.add(
            AttachmentRecord(
                message_id=4,
                filename='..\\..\\evil"\r\nSet-Cookie: session=x; .html',
                content_type="text/html\r\nX-Injected: 1",
                size=16,
                sha256=session.get(AttachmentRecord, 1).sha256,
                stored=True,
            )
        )
        session.commit()
    got = sqlite_api.get("/api/v1/tickets/T-000004/attachments/2")
    assert got.status == 200
    assert "set-cookie" not in got.headers and "x-injected" not in got.headers
    assert got.headers["content-type"] == "application/octet-stream"
    disposition = got.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="evil_')
    assert "\\" not in disposition and ".." not in disposition
    assert got.headers["content-security-policy"].startswith("sandbox")


@given(st.text(max_size=300))
def test_a_download_name_never_carries_a_path_a_quote_or_a_control_character(name: str) -> None:
    safe = safe_filename(name, "fallback")
    assert safe and "/" not in safe and "\\" not in safe and '"' not in safe
    assert not safe.startswith(".") and len(safe) <= 150
    assert all(ch.isprintable() or ch == " " for ch in safe)
    header = content_disposition(safe)
    assert "\r" not in header and "\n" not in header and header.isascii()
    assert safe_content_type(name) in (
        name.split(";")[0].strip().lower(),
        "application/octet-stream",
    )


# ---- changes --------------------------------------------------------------------------------


def test_status_changes_pause_the_clock_need_a_resolution_kind_and_are_audited(
    api: ApiServer,
) -> None:
    url = "/api/v1/tickets/T-000001/status"
    waiting = api.post(url, {"status": "waiting", "reason": "asked for logs"})
    assert waiting.status == 200 and waiting.json()["changed"] is True
    assert waiting.json()["ticket"]["sla"]["waiting_since"] is not None
    with api.gateway.session() as session:
        (pause,) = session.execute(select(TicketPause)).scalars()
        assert pause.ended_at is None

    again = api.post(url, {"status": "waiting"})
    assert again.status == 200 and again.json()["changed"] is False

    assert api.post(url, {"status": "open"}).json()["ticket"]["sla"]["waiting_since"] is None
    with api.gateway.session() as session:
        (pause,) = session.execute(select(TicketPause)).scalars()
        assert pause.ended_at is not None

    no_kind = api.post(url, {"status": "resolved"})
    assert no_kind.status == 422 and "resolution" in no_kind.json()["error"]["message"]
    misplaced = api.post(url, {"status": "waiting", "resolution": "workaround"})
    assert misplaced.status == 422
    unknown = api.post(url, {"status": "resolved", "resolution": "magic"})
    assert unknown.status == 422 and unknown.json()["error"]["fields"][0]["location"] == (
        "body.resolution"
    )
    resolved = api.post(url, {"status": "resolved", "resolution": "enhancement_request"})
    assert resolved.json()["ticket"]["status"] == "resolved"
    shown = api.get("/api/v1/tickets/T-000001").json()
    assert shown["resolution"] == "enhancement_request"
    assert [e["new"] for e in shown["events"] if e["kind"] == "status"] == [
        "waiting",
        "open",
        "resolved",
    ]
    assert "T-000001" not in refs(api.get("/api/v1/tickets"))  # resolved leaves the queue

    entries = audit(api, target="T-000001")
    assert [(e.action, e.after["status"]) for e in entries] == [
        ("ticket.status", "waiting"),
        ("ticket.status", "open"),
        ("ticket.status", "resolved"),
    ]
    assert {(e.actor, e.via) for e in entries} == {("api:agent", "api")}
    assert entries[0].before["status"] == "new" and entries[0].reason == "asked for logs"
    assert entries[2].after["resolution"] == "enhancement_request"


def test_first_response_given_by_phone_stops_the_clock_once(sqlite_api: ApiServer) -> None:
    api = sqlite_api
    url = "/api/v1/tickets/T-000002/first-response"
    done = api.post(url, {"reason": "called the clinic back"})
    assert done.status == 200 and done.json()["changed"] is True
    sla = done.json()["ticket"]["sla"]
    assert sla["first_response_at"] is not None and sla["first_response_seconds_left"] is None
    assert done.json()["ticket"]["status"] == "open"
    assert api.post(url, {}).json()["changed"] is False
    assert [e.action for e in audit(api, target="T-000002")] == ["ticket.first_response"]


def test_a_change_and_its_audit_entry_commit_together_or_not_at_all(
    sqlite_api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.storage import admin

    def failing(*_: Any, **__: Any) -> Any:
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(admin, "record_action", failing)
    reply = sqlite_api.post("/api/v1/tickets/T-000001/status", {"status": "closed"})
    assert reply.status == 500 and reply.json()["error"]["code"] == "internal"
    assert ticket(sqlite_api, "T-000001").status == "new"


def test_a_severity_correction_is_audited_and_is_a_label_of_the_next_training(
    sqlite_api: ApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "/api/v1/tickets/T-000003/severity"
    was = ticket(sqlite_api, "T-000003").severity
    assert was != "high"
    assert sqlite_api.post(url, {"level": "critical", "reason": "x"}).status == 422
    assert sqlite_api.post(url, {"level": "high"}).status == 422  # a reason is required
    assert sqlite_api.post(url, {"level": "high", "reason": "  "}).status == 422
    fixed = sqlite_api.post(url, {"level": "high", "reason": "blocks their month end"})
    assert fixed.status == 200 and fixed.json()["ticket"]["severity"] == "high"

    with sqlite_api.gateway.session() as session:
        (label,) = session.execute(select(SeverityLabel)).scalars()
    assert (label.level, label.previous, label.actor) == ("high", was, "agent")
    (entry,) = audit(sqlite_api, action="ticket.severity")
    assert (entry.target, entry.before, entry.after, entry.reason) == (
        "T-000003",
        {"severity": was},
        {"severity": "high"},
        "blocks their month end",
    )
    # The next `gateway train` gets exactly this correction beside the shipped corpus (the
    # training itself is stubbed: what matters here is the label set it is handed).
    import classifiers.training

    handed: list[Any] = []

    def train(model_dir: Path, extra: Any, **_: Any) -> Any:
        handed.extend(extra)
        return SimpleNamespace(installed=False, reason="stub: not trained")

    monkeypatch.setattr(classifiers.training, "train", train)
    assert cli_main(["--config", str(sqlite_api.config), "train"]) == 0
    assert "plus 1 agent label(s)" in capsys.readouterr().out
    (example,) = handed
    assert (example.subject, example.level) == ("Feature idea", "high")
    assert "dark mode" in example.body


def test_the_cli_records_its_changes_in_the_audit_log_too(sqlite_api: ApiServer) -> None:
    config = ["--config", str(sqlite_api.config), "ticket"]
    assert cli_main([
        *config, "set-status", "T-000004", "closed", "--resolution", "solution",
        "--reason", "answered on the phone", "--actor", "sam",
    ]) == 0  # fmt: skip
    assert (
        cli_main([*config, "set-severity", "T-000004", "high", "--reason", "VIP", "--actor", "sam"])
        == 0
    )
    entries = audit(sqlite_api, target="T-000004")
    assert [(e.action, e.actor, e.via) for e in entries] == [
        ("ticket.status", "cli:sam", "cli"),
        ("ticket.severity", "cli:sam", "cli"),
    ]
    assert entries[0].after == {"status": "closed", "resolution": "solution"}
    exported = sqlite_api.get("/api/v1/audit?target=T-000004", token=ADMIN_TOKEN).json()
    assert [e["actor"] for e in exported["entries"]] == ["cli:sam", "cli:sam"]


def test_the_audit_log_exports_oldest_first_in_pages(sqlite_api: ApiServer) -> None:
    for status in ("waiting", "open", "closed"):
        sqlite_api.post("/api/v1/tickets/T-000001/status", {"status": status})
    page = sqlite_api.get("/api/v1/audit?limit=2", token=ADMIN_TOKEN).json()
    assert [e["after"]["status"] for e in page["entries"]] == ["waiting", "open"]
    rest = sqlite_api.get(
        f"/api/v1/audit?limit=2&cursor={page['next_cursor']}", token=ADMIN_TOKEN
    ).json()
    assert [e["after"]["status"] for e in rest["entries"]] == ["closed"]
    assert rest["next_cursor"] is None
    assert sqlite_api.get("/api/v1/audit?action=ticket.merge", token=ADMIN_TOKEN).json() == {
        "entries": [],
        "next_cursor": None,
    }
    assert sqlite_api.get("/api/v1/audit", token=WRITE_TOKEN).status == 403
    json.dumps(page)  # plain JSON throughout


def test_an_outbound_message_is_recorded_with_its_own_raw_download(sqlite_api: ApiServer) -> None:
    sent = sqlite_api.post("/api/v1/tickets/T-000001/replies", {"text": "Use File > Export."})
    assert sent.status == 201
    message = sent.json()["message"]
    raw = sqlite_api.get(message["raw_url"])
    assert raw.status == 200 and raw.body == b"Use File > Export."
    assert raw.headers["content-type"].startswith("text/plain")
    with sqlite_api.gateway.session() as session:
        stored = session.get(Message, message["id"])
        assert stored is not None and stored.direction == "out"
