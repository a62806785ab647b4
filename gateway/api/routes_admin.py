"""/api/v1 admin operations: the audit log, the billing export, the spool and the quarantine.

Owns the admin scope's HTTP side: every route here needs a token with `admin`. The audit log is
exported oldest first in pages (`cursor` = the last id seen); the billing export is
`gateway.emergency.billing_views.export_incidents` (501 without billing); the spool and
quarantine are
shown as `gateway spool`/`gateway quarantine` show them, and a replay is audited (the spool is
files: the audit row commits right after the move). Never changes a spool entry except by
`Spool.replay`, never exposes a path on disk, and accepts only well-formed spool ids (no path
traversal).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.api import integrations
from gateway.api.auth import ApiError, Principal, require
from gateway.api.context import ApiContext, get_context, read_session
from gateway.api.errors import binary_download, documented_errors
from gateway.api.schemas import (
    AuditEntryOut,
    AuditPage,
    BillingExport,
    QuarantineEntryOut,
    ReplayRequest,
    ReplayResult,
    SpoolEntryOut,
)
from gateway.api.views import download_headers
from gateway.intake.spool import Entry, QuarantineRecord, SpoolError
from gateway.privacy.audit import Actor, record_action
from gateway.storage.agent_tables import AuditEntry
from gateway.storage.queries import as_utc

router = APIRouter(prefix="/api/v1", tags=["admin"])

Ctx = Annotated[ApiContext, Depends(get_context)]
Admin = Annotated[Principal, Depends(require("admin"))]
ReadSession = Annotated[Session, Depends(read_session)]
SpoolId = Annotated[
    str,
    Path(
        description="A spool entry id, as `gateway spool list` prints it.",
        max_length=40,
        examples=["00000001763900000000-0123456789ab"],
    ),
]
SPOOL_ID = re.compile(r"\d{20}-[0-9a-f]{12}")


def _aware(value: datetime | None, name: str) -> datetime | None:
    """`value` in UTC, as stored (SQLite keeps wall-clock text: an offset would compare
    wrongly); 422 for a time without a timezone."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ApiError(422, "invalid_request", f"{name} needs a timezone (e.g. ...Z)")
    return value.astimezone(UTC)


# ---- audit log ------------------------------------------------------------------------------


@router.get(
    "/audit",
    response_model=AuditPage,
    summary="Export the audit log: who did what, when, before and after (oldest first)",
    responses=documented_errors(401, 403, 422),
)
def get_audit(
    _: Admin,
    session: ReadSession,
    since: datetime | None = None,
    until: datetime | None = None,
    target: Annotated[str | None, Query(max_length=128, description="e.g. T-000123")] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. ticket.status")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    cursor: Annotated[
        int | None, Query(ge=0, le=2**62, description="The last id of the previous page.")
    ] = None,
) -> AuditPage:
    query = select(AuditEntry).order_by(AuditEntry.id)
    if (start := _aware(since, "since")) is not None:
        query = query.where(AuditEntry.at >= start)
    if (end := _aware(until, "until")) is not None:
        query = query.where(AuditEntry.at < end)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if cursor is not None:
        query = query.where(AuditEntry.id > cursor)
    rows = list(session.execute(query.limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        entries=[
            AuditEntryOut(
                id=e.id,
                at=as_utc(e.at) or e.at,
                actor=e.actor,
                via=e.via,
                action=e.action,
                target=e.target,
                before=dict(e.before or {}),
                after=dict(e.after or {}),
                reason=e.reason,
            )
            for e in rows
        ],
        next_cursor=str(rows[-1].id) if more and rows else None,
    )


# ---- billing --------------------------------------------------------------------------------


@router.get(
    "/billing/export",
    response_model=BillingExport,
    summary="Export the emergency incidents opened in [since, until), with totals",
    description="The same export as `gateway billing export` (gateway/emergency/ledger.py): "
    "one line per incident with what it cost, and totals per currency. `format=csv` answers "
    "billing's CSV.",
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "The export (JSON, or CSV with format=csv)",
        },
        **documented_errors(401, 403, 422),
    },
)
def get_billing_export(
    _: Admin,
    session: ReadSession,
    since: Annotated[datetime, Query(description="Start, inclusive (with a timezone).")],
    until: Annotated[datetime, Query(description="End, exclusive (with a timezone).")],
    format: Literal["json", "csv"] = "json",
) -> BillingExport | Response:
    start, end = _aware(since, "since"), _aware(until, "until")
    assert start is not None and end is not None
    if end < start:
        raise ApiError(422, "invalid_request", "until is before since")
    export = integrations.export_incidents(session, start, end)
    if format == "csv":
        name = f"billing-{start.date().isoformat()}-{end.date().isoformat()}.csv"
        return Response(
            export.csv, media_type="text/csv; charset=utf-8", headers=download_headers(name)
        )
    return BillingExport(since=start, until=end, incidents=export.lines, totals=export.totals)


# ---- spool and quarantine -------------------------------------------------------------------


def _entry_out(entry: Entry) -> SpoolEntryOut:
    env = entry.envelope
    return SpoolEntryOut(
        id=entry.id,
        channel=env.channel,
        received_at=env.received_at,
        mail_from=env.mail_from,
        recipients=list(env.recipients),
        peer=env.peer,
        size=entry.size,
        attempts=entry.attempts,
        last_stage=entry.last_stage,
        last_error=entry.last_error,
    )


def _quarantined_out(record: QuarantineRecord) -> QuarantineEntryOut:
    env = record.envelope
    return QuarantineEntryOut(
        id=record.id,
        channel=env.channel,
        received_at=env.received_at,
        mail_from=env.mail_from,
        recipients=list(env.recipients),
        size=record.size,
        attempts=record.attempts,
        stage=record.stage,
        error=record.error,
        quarantined_at=record.quarantined_at,
    )


def _spool_id(entry_id: str) -> str:
    if SPOOL_ID.fullmatch(entry_id) is None:
        raise ApiError(404, "not_found", "no spool entry with that id")
    return entry_id


@router.get(
    "/spool",
    response_model=list[SpoolEntryOut],
    summary="Messages waiting in the spool (incoming and being processed), oldest first",
    responses=documented_errors(401, 403, 422),
)
def get_spool(
    _: Admin, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=10000)] = 1000
) -> list[SpoolEntryOut]:
    return [_entry_out(e) for e in ctx.spool.pending()[:limit]]


@router.get(
    "/spool/{entry_id}",
    response_model=SpoolEntryOut,
    summary="One spool entry, wherever it is (waiting, being processed or quarantined)",
    responses=documented_errors(401, 403, 404),
)
def get_spool_entry(entry_id: SpoolId, _: Admin, ctx: Ctx) -> SpoolEntryOut:
    entry = ctx.spool.get(_spool_id(entry_id))
    if entry is None:
        raise ApiError(404, "not_found", "no spool entry with that id")
    return _entry_out(entry)


@router.get(
    "/spool/{entry_id}/raw",
    summary="A spool entry's message bytes, exactly as received",
    response_class=Response,
    responses=binary_download("The raw bytes", 401, 403, 404),
)
def get_spool_raw(entry_id: SpoolId, _: Admin, ctx: Ctx) -> Response:
    entry = ctx.spool.get(_spool_id(entry_id))
    if entry is None:
        raise ApiError(404, "not_found", "no spool entry with that id")
    try:
        raw = ctx.spool.read_raw(entry)
    except SpoolError:
        raise ApiError(404, "not_found", "the entry left the spool meanwhile") from None
    twilio = entry.envelope.channel.startswith("twilio")
    media = "application/json" if twilio else "message/rfc822"
    name = f"spool-{entry.id}.{'json' if twilio else 'eml'}"
    return Response(raw, media_type=media, headers=download_headers(name))


@router.get(
    "/quarantine",
    response_model=list[QuarantineEntryOut],
    summary="Quarantined (poison) messages with the stage and error that stopped them",
    responses=documented_errors(401, 403, 422),
)
def get_quarantine(
    _: Admin, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=10000)] = 1000
) -> list[QuarantineEntryOut]:
    return [_quarantined_out(r) for r in ctx.spool.quarantined()[:limit]]


@router.get(
    "/quarantine/{entry_id}",
    response_model=QuarantineEntryOut,
    summary="One quarantined message",
    responses=documented_errors(401, 403, 404),
)
def get_quarantined(entry_id: SpoolId, _: Admin, ctx: Ctx) -> QuarantineEntryOut:
    record = ctx.spool.quarantine_record(_spool_id(entry_id))
    if record is None:
        raise ApiError(404, "not_found", "no quarantined entry with that id")
    return _quarantined_out(record)


def _replay(ctx: ApiContext, principal: Principal, ids: list[str], reason: str) -> ReplayResult:
    replayed: list[str] = []
    missing: list[str] = []
    for entry_id in ids:
        try:
            ok = ctx.spool.replay(entry_id)
        except SpoolError:
            ok = False
        (replayed if ok else missing).append(entry_id)
    if replayed:
        with ctx.write_sessions.begin() as session:
            at = ctx.clock()
            for entry_id in replayed:
                record_action(
                    session,
                    Actor(principal.name, "api"),
                    "quarantine.replay",
                    entry_id,
                    at=at,
                    before={"quarantined": True},
                    after={"quarantined": False},
                    reason=reason,
                )
    return ReplayResult(replayed=replayed, missing=missing)


@router.post(
    "/quarantine/{entry_id}/replay",
    response_model=ReplayResult,
    summary="Put a quarantined message back in the spool (attempts reset)",
    responses=documented_errors(401, 403, 404, 422),
)
def post_replay(entry_id: SpoolId, body: ReplayRequest, principal: Admin, ctx: Ctx) -> ReplayResult:
    result = _replay(ctx, principal, [_spool_id(entry_id)], body.reason)
    if not result.replayed:
        raise ApiError(404, "not_found", "no quarantined entry with that id")
    return result


@router.post(
    "/quarantine/replay",
    response_model=ReplayResult,
    summary="Put every quarantined message back in the spool",
    responses=documented_errors(401, 403, 422),
)
def post_replay_all(body: ReplayRequest, principal: Admin, ctx: Ctx) -> ReplayResult:
    return _replay(ctx, principal, [r.id for r in ctx.spool.quarantined()], body.reason)
