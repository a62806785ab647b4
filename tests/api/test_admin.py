"""Admin operations over HTTP: the spool and the quarantine shown as `gateway spool` /
`gateway quarantine` show them, a replay that is audited, and ids that cannot reach a path."""

from __future__ import annotations

from sqlalchemy import select

from gateway.storage.agent_tables import AuditEntry
from tests.api.conftest import ADMIN_TOKEN, ApiServer
from tests.helpers import make_email


def test_spool_and_quarantine_can_be_inspected_and_replayed_by_an_admin(
    sqlite_api: ApiServer,
) -> None:
    spool = sqlite_api.gateway.spool
    raw = make_email(subject="Stuck", message_id="<stuck@x>")
    stuck = sqlite_api.gateway.ingest(raw)
    waiting = sqlite_api.get("/api/v1/spool", token=ADMIN_TOKEN).json()
    assert [e["id"] for e in waiting] == [stuck]
    assert waiting[0]["channel"] == "smtp" and waiting[0]["attempts"] == 0

    entry = spool.claim()
    assert entry is not None
    spool.quarantine(entry, stage="classify", error="ValueError: model exploded")
    (shown,) = sqlite_api.get("/api/v1/quarantine", token=ADMIN_TOKEN).json()
    assert (shown["id"], shown["stage"], shown["error"]) == (
        stuck,
        "classify",
        "ValueError: model exploded",
    )
    one = sqlite_api.get(f"/api/v1/quarantine/{stuck}", token=ADMIN_TOKEN)
    assert one.status == 200 and one.json()["stage"] == "classify"
    body = sqlite_api.get(f"/api/v1/spool/{stuck}/raw", token=ADMIN_TOKEN)
    assert body.status == 200 and body.body == raw
    assert body.headers["content-type"] == "message/rfc822"

    replayed = sqlite_api.post(
        f"/api/v1/quarantine/{stuck}/replay", {"reason": "model fixed"}, token=ADMIN_TOKEN
    )
    assert replayed.status == 200 and replayed.json() == {"replayed": [stuck], "missing": []}
    assert sqlite_api.get("/api/v1/quarantine", token=ADMIN_TOKEN).json() == []
    assert spool.get(stuck) is not None and spool.get(stuck).attempts == 0  # type: ignore[union-attr]
    again = sqlite_api.post(f"/api/v1/quarantine/{stuck}/replay", {}, token=ADMIN_TOKEN)
    assert again.status == 404
    sqlite_api.gateway.drain()
    assert "Stuck" in [t.subject for t in sqlite_api.gateway.tickets()]

    with sqlite_api.gateway.session() as session:
        (entry_row,) = session.execute(select(AuditEntry)).scalars()
    assert (entry_row.action, entry_row.target, entry_row.actor, entry_row.reason) == (
        "quarantine.replay",
        stuck,
        "api:boss",
        "model fixed",
    )


def test_spool_ids_that_are_not_ids_never_reach_the_filesystem(sqlite_api: ApiServer) -> None:
    for bad in ("..%2F..%2Fgateway.db", "00000000000000000000-zzzzzzzzzzzz", "x" * 40):
        for path in (f"/api/v1/spool/{bad}", f"/api/v1/spool/{bad}/raw"):
            reply = sqlite_api.get(path, token=ADMIN_TOKEN)
            assert reply.status == 404, (path, reply.status)
            assert reply.json()["error"]["code"] == "not_found"
