"""Retention: `gateway purge` removes what a closed ticket no longer needs, and deletes blobs.

Owns the purge rule and the only code that deletes blobs (`gateway/intake/blobs.py` never deletes).

* **Closed tickets past retention** (status resolved or closed, closed before the cutoff) and
  **messages that never became a ticket** (rejected, discarded) received before the cutoff lose
  their message bodies (`messages.text`), their attachments' content (`attachments.stored`
  becomes false; name, type, size and hash stay), their raw messages (`messages.raw_sha256`
  becomes "": no raw kept), the copy of the body in severity labels, and the bodies of outbox
  rows that are done (sent, suppressed, failed). Each purged ticket gets a `purge` ticket event.
* **Raw messages** of any message older than `[retention] raw_message_days` (when set) are
  dropped even while the ticket is open: the parsed text and the attachments stay.
* **Unreferenced blobs** older than the cutoff (raw messages of recorded duplicates, of
  messages that failed after their blobs were written, leftovers of a crash) are deleted.

A blob is deleted only when no message or stored attachment that keeps its content still names
it: content-addressed blobs are shared (the same logo in a hundred signatures). Purge commits
first and deletes the files afterwards, so a row never names a missing blob; a crash in between
leaves unreferenced blobs, which the next run's orphan sweep removes (they are old by then).
One race is accepted, not prevented: a worker batch that brings the very same bytes at the
moment their last old reference is purged finds the file present (`BlobStore.put` skips it)
and may commit a row naming a blob just deleted; readers must treat a missing blob as gone.

Must never: touch an open, reopened or recently closed ticket; delete intakes (their dedup keys
make a replay of a purged message a recorded duplicate, not a new ticket), tickets, SLA clocks,
decisions, ticket events, billing or audit rows; delete a blob something kept still names; or
change anything without an audit entry in the same transaction (one per batch of tickets).
Dry run (`apply=False`) reads only.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TypeVar

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.intake.blobs import SPOOLED, BlobStore
from gateway.privacy.audit import Actor, record_action
from gateway.storage.models import (
    AttachmentRecord,
    Message,
    OutboxRow,
    SeverityLabel,
    Ticket,
    TicketEvent,
)

CLOSED_STATUSES: Final = ("resolved", "closed")
# Outbox rows in these states are done: their body is only a copy of what was said.
DONE_OUTBOX: Final = ("sent", "suppressed", "failed")
# Tickets per transaction: a long purge never holds SQLite's write lock for long (intake goes on
# in the spool meanwhile) and each batch is audited with the change it made.
BATCH: Final = 200
# Bind parameters per IN (...) list: far below SQLite's and psycopg's limits.
_CHUNK: Final = 500
_SHA: Final = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


# ---- blobs: listing, reference checks and deletion (shared with gateway.privacy.erasure) ---


@dataclass(frozen=True)
class BlobFile:
    sha256: str
    path: Path
    size: int
    mtime: datetime


def blob_files(store: BlobStore) -> Iterator[BlobFile]:
    """Every blob file in the store (crash leftovers `.tmp-*` are not blobs: see stale_temp)."""
    if not store.root.is_dir():
        return
    for prefix in sorted(os.listdir(store.root)):
        directory = store.root / prefix
        if len(prefix) != 2 or not directory.is_dir():
            continue
        for name in sorted(os.listdir(directory)):
            # `<sha>` holds the bytes; `<sha>.msg` is a linked spool entry (intake/blobs.py).
            sha = name.removesuffix(SPOOLED)
            if not _SHA.fullmatch(sha) or sha[:2] != prefix:
                continue
            path = directory / name
            try:
                status = path.stat()
            except FileNotFoundError:
                continue
            yield BlobFile(sha, path, status.st_size, datetime.fromtimestamp(status.st_mtime, UTC))


def stale_temp(store: BlobStore, before: datetime) -> list[Path]:
    """`.tmp-*` files of blob writes that never finished, last touched before `before`."""
    found: list[Path] = []
    if not store.root.is_dir():
        return found
    for directory in store.root.iterdir():
        if not directory.is_dir():
            continue
        for path in directory.glob(".tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                if datetime.fromtimestamp(path.stat().st_mtime, UTC) < before:
                    found.append(path)
    return found


def blob_size(store: BlobStore, sha256: str) -> int:
    try:
        path = store.file(sha256)
        return 0 if path is None else path.stat().st_size
    except (FileNotFoundError, ValueError):
        return 0


def chunks(items: Iterable[T], size: int = _CHUNK) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def still_referenced(
    session: Session, shas: Collection[str], *, ignoring: Collection[int] = ()
) -> set[str]:
    """Which of `shas` a message (raw) or a stored attachment names, not counting the messages
    whose ids are in `ignoring` (the ones being purged or erased now)."""
    used: set[str] = set()
    wanted = sorted(s for s in shas if s)
    for part in chunks(wanted):
        for message_id, sha in session.execute(
            select(Message.id, Message.raw_sha256).where(Message.raw_sha256.in_(part))
        ):
            if message_id not in ignoring:
                used.add(sha)
        for message_id, sha in session.execute(
            select(AttachmentRecord.message_id, AttachmentRecord.sha256).where(
                AttachmentRecord.sha256.in_(part), AttachmentRecord.stored.is_(True)
            )
        ):
            if message_id not in ignoring:
                used.add(sha)
    return used


def delete_files(paths: Iterable[Path], *, durable: bool = True) -> int:
    """Unlink files; returns the bytes freed. `durable`: fsync each directory afterwards, so the
    deletion itself survives a power cut (erasure must not come back after a crash)."""
    freed = 0
    directories: set[Path] = set()
    for path in paths:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        freed += size
        directories.add(path.parent)
    if durable:
        for directory in directories:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return freed


# ---- purge ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeReport:
    """What a purge did (applied) or would do (dry run)."""

    applied: bool
    cutoff: datetime
    raw_cutoff: datetime | None
    tickets: tuple[str, ...]  # references of the tickets whose content was (or would be) purged
    ticketless_messages: int  # rejected/discarded messages purged
    messages: int  # message bodies removed
    attachments: int  # attachment contents removed
    raw_messages: int  # raw messages removed (with the bodies, or by raw_message_days)
    labels: int  # severity labels whose copy of the body was removed
    outbox_bodies: int  # bodies of done outbox rows removed
    blobs: int  # blob files deleted
    orphan_blobs: int  # of which unreferenced (duplicates' raw messages, crash leftovers)
    bytes_freed: int

    @property
    def changed(self) -> bool:
        return bool(
            self.tickets
            or self.ticketless_messages
            or self.raw_messages
            or self.messages
            or self.attachments
            or self.labels
            or self.outbox_bodies
            or self.blobs
        )


@dataclass
class _Tally:
    tickets: list[str]
    ticketless: int = 0
    messages: int = 0
    attachments: int = 0
    raw: int = 0
    labels: int = 0
    outbox: int = 0
    blobs: int = 0
    orphans: int = 0
    freed: int = 0


def _has_content() -> ColumnElement[bool]:
    """A message still holding something retention removes."""
    return or_(
        Message.text != "",
        Message.raw_sha256 != "",
        exists().where(
            AttachmentRecord.message_id == Message.id, AttachmentRecord.stored.is_(True)
        ),
    )


def _closed_before(cutoff: datetime) -> ColumnElement[bool]:
    # closed_at is set by every status change to resolved/closed; updated_at covers rows written
    # before that rule existed.
    return and_(
        Ticket.status.in_(CLOSED_STATUSES),
        func.coalesce(Ticket.closed_at, Ticket.updated_at) < cutoff,
    )


def _ticket_holds_content() -> ColumnElement[bool]:
    return or_(
        exists().where(Message.ticket_id == Ticket.id, _has_content()),
        exists().where(SeverityLabel.ticket_id == Ticket.id, SeverityLabel.text != ""),
        exists().where(
            OutboxRow.ticket_id == Ticket.id,
            OutboxRow.status.in_(DONE_OUTBOX),
            OutboxRow.body != "",
        ),
    )


def purge(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    *,
    now: datetime,
    older_than_days: int,
    raw_message_days: int = 0,
    apply: bool = False,
    actor: Actor,
    reason: str = "",
    batch_size: int = BATCH,
) -> PurgeReport:
    """Purge (apply=True) or report what a purge would remove (apply=False, reads only)."""
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    cutoff = now - timedelta(days=older_than_days)
    raw_cutoff = now - timedelta(days=raw_message_days) if raw_message_days > 0 else None
    tally = _Tally(tickets=[])
    with sessions() as session:
        ticket_ids = list(
            session.execute(
                select(Ticket.id)
                .where(_closed_before(cutoff), _ticket_holds_content())
                .order_by(Ticket.id)
            ).scalars()
        )
        ticketless_ids = list(
            session.execute(
                select(Message.id)
                .where(Message.ticket_id.is_(None), Message.received_at < cutoff, _has_content())
                .order_by(Message.id)
            ).scalars()
        )
    # A dry run sees every batch at once: a blob shared only by messages this run purges counts
    # as freed. An applied run checks references per batch against what is committed.
    planned: set[int] = set()
    if not apply:
        with sessions() as session:
            for part in chunks(ticket_ids):
                planned.update(
                    session.execute(select(Message.id).where(Message.ticket_id.in_(part))).scalars()
                )
        planned.update(ticketless_ids)

    for part in chunks(ticket_ids, batch_size):
        _purge_batch(
            sessions, blobs, tally, now, cutoff, apply, actor, reason, tickets=part, planned=planned
        )
    for part in chunks(ticketless_ids, batch_size * 5):
        _purge_batch(
            sessions,
            blobs,
            tally,
            now,
            cutoff,
            apply,
            actor,
            reason,
            messages=part,
            planned=planned,
        )
    if raw_cutoff is not None:
        _drop_raw(sessions, blobs, tally, now, raw_cutoff, apply, actor, reason, planned)
    # Unreferenced blobs are raw messages nobody can see: the shorter limit applies.
    orphan_cutoff = max(cutoff, raw_cutoff) if raw_cutoff is not None else cutoff
    _sweep_orphans(blobs, sessions, tally, orphan_cutoff, apply, now, actor, reason)
    return PurgeReport(
        applied=apply,
        cutoff=cutoff,
        raw_cutoff=raw_cutoff,
        tickets=tuple(tally.tickets),
        ticketless_messages=tally.ticketless,
        messages=tally.messages,
        attachments=tally.attachments,
        raw_messages=tally.raw,
        labels=tally.labels,
        outbox_bodies=tally.outbox,
        blobs=tally.blobs,
        orphan_blobs=tally.orphans,
        bytes_freed=tally.freed,
    )


def _purge_batch(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    tally: _Tally,
    now: datetime,
    cutoff: datetime,
    apply: bool,
    actor: Actor,
    reason: str,
    *,
    tickets: list[int] | None = None,
    messages: list[int] | None = None,
    planned: set[int],
) -> None:
    with sessions() as session:
        refs: list[str] = []
        ticket_ids: list[int] = []
        if tickets is not None:
            # Re-checked inside the transaction (and locked on PostgreSQL): a ticket reopened
            # since the candidates were listed is left alone.
            rows = session.execute(
                select(Ticket.id, Ticket.reference)
                .where(Ticket.id.in_(tickets), _closed_before(cutoff))
                .order_by(Ticket.id)
                .with_for_update()
            ).all()
            ticket_ids = [tid for tid, _ in rows]
            refs = [ref or f"#{tid}" for tid, ref in rows]
            if not ticket_ids:
                return
            in_scope: ColumnElement[bool] = Message.ticket_id.in_(ticket_ids)
        else:
            in_scope = and_(
                Message.id.in_(messages or []),
                Message.ticket_id.is_(None),
                Message.received_at < cutoff,
            )
        message_rows = session.execute(
            select(Message.id, Message.raw_sha256, Message.text).where(in_scope)
        ).all()
        message_ids = [mid for mid, _, _ in message_rows]
        bodies = sum(1 for _, _, text in message_rows if text)
        raw_count = sum(1 for _, sha, _ in message_rows if sha)
        attachment_rows = (
            session.execute(
                select(AttachmentRecord.id, AttachmentRecord.sha256).where(
                    AttachmentRecord.message_id.in_(message_ids),
                    AttachmentRecord.stored.is_(True),
                )
            ).all()
            if message_ids
            else []
        )
        labels = 0
        outbox = 0
        if ticket_ids:
            labels = session.execute(
                select(func.count())
                .select_from(SeverityLabel)
                .where(SeverityLabel.ticket_id.in_(ticket_ids), SeverityLabel.text != "")
            ).scalar_one()
            outbox = session.execute(
                select(func.count()).select_from(OutboxRow).where(*_done_outbox(ticket_ids))
            ).scalar_one()
        if not (bodies or raw_count or attachment_rows or labels or outbox):
            return
        candidates = {sha for _, sha, _ in message_rows if sha}
        candidates |= {sha for _, sha in attachment_rows if sha}
        ignoring = planned if not apply else set(message_ids)
        doomed = candidates - still_referenced(session, candidates, ignoring=ignoring)
        tally.tickets.extend(refs)
        tally.ticketless += len(message_ids) if tickets is None else 0
        tally.messages += bodies
        tally.attachments += len(attachment_rows)
        tally.raw += raw_count
        tally.labels += labels
        tally.outbox += outbox
        tally.blobs += len(doomed)
        if not apply:
            tally.freed += sum(blob_size(blobs, sha) for sha in doomed)
            return
        if message_ids:
            session.execute(
                update(Message).where(Message.id.in_(message_ids)).values(text="", raw_sha256="")
            )
            session.execute(
                update(AttachmentRecord)
                .where(AttachmentRecord.message_id.in_(message_ids))
                .values(stored=False)
            )
        if ticket_ids:
            session.execute(
                update(SeverityLabel).where(SeverityLabel.ticket_id.in_(ticket_ids)).values(text="")
            )
            session.execute(update(OutboxRow).where(*_done_outbox(ticket_ids)).values(body=""))
        why = f"retention: message bodies and attachments of tickets closed before {_day(cutoff)}"
        for tid in ticket_ids:
            session.add(
                TicketEvent(
                    ticket_id=tid, kind="purge", reason=why, actor=actor.label[:128], at=now
                )
            )
        record_action(
            session,
            actor,
            "retention.purge",
            "tickets" if tickets is not None else "messages without ticket",
            at=now,
            before={"cutoff": cutoff.isoformat(), "tickets": refs, "messages": len(message_ids)},
            after={
                "bodies_removed": bodies,
                "attachments_removed": len(attachment_rows),
                "raw_messages_removed": raw_count,
                "labels_emptied": labels,
                "outbox_bodies_removed": outbox,
                "blobs_deleted": len(doomed),
            },
            reason=reason,
        )
        session.commit()
    # Committed: now the files can go (a crash here leaves orphans for the next run).
    tally.freed += delete_files((p for sha in doomed for p in blobs.paths(sha)), durable=False)


def _done_outbox(ticket_ids: list[int]) -> tuple[ColumnElement[bool], ...]:
    return (
        OutboxRow.ticket_id.in_(ticket_ids),
        OutboxRow.status.in_(DONE_OUTBOX),
        OutboxRow.body != "",
    )


def _drop_raw(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    tally: _Tally,
    now: datetime,
    raw_cutoff: datetime,
    apply: bool,
    actor: Actor,
    reason: str,
    planned: set[int],
) -> None:
    """raw_message_days: raw messages of any message received before `raw_cutoff`."""
    with sessions() as session:
        ids = list(
            session.execute(
                select(Message.id)
                .where(Message.raw_sha256 != "", Message.received_at < raw_cutoff)
                .order_by(Message.id)
            ).scalars()
        )
    if not apply:
        # Those the body purge above already counts are not counted twice.
        ids = [i for i in ids if i not in planned]
    for part in chunks(ids, BATCH * 5):
        with sessions() as session:
            rows = session.execute(
                select(Message.id, Message.raw_sha256).where(
                    Message.id.in_(part), Message.raw_sha256 != ""
                )
            ).all()
            if not rows:
                continue
            shas = {sha for _, sha in rows}
            ignoring = planned | set(part) if not apply else {mid for mid, _ in rows}
            doomed = shas - still_referenced(session, shas, ignoring=ignoring)
            tally.raw += len(rows)
            tally.blobs += len(doomed)
            if not apply:
                tally.freed += sum(blob_size(blobs, sha) for sha in doomed)
                continue
            session.execute(
                update(Message)
                .where(Message.id.in_([mid for mid, _ in rows]))
                .values(raw_sha256="")
            )
            record_action(
                session,
                actor,
                "retention.purge-raw",
                "raw messages",
                at=now,
                before={"raw_cutoff": raw_cutoff.isoformat(), "messages": len(rows)},
                after={"raw_messages_removed": len(rows), "blobs_deleted": len(doomed)},
                reason=reason,
            )
            session.commit()
        tally.freed += delete_files((p for sha in doomed for p in blobs.paths(sha)), durable=False)


def _sweep_orphans(
    blobs: BlobStore,
    sessions: sessionmaker[Session],
    tally: _Tally,
    before: datetime,
    apply: bool,
    now: datetime,
    actor: Actor,
    reason: str,
) -> None:
    """Blobs no row names, written before `before`: recorded duplicates' raw messages and crash
    leftovers. The age limit keeps blobs of a batch still in flight (written, not committed).
    No row changes, so the audit entry follows the deletion."""
    old = [f for f in blob_files(blobs) if f.mtime < before]
    doomed: list[BlobFile] = []
    with sessions() as session:
        for start in range(0, len(old), _CHUNK):
            part = old[start : start + _CHUNK]
            used = still_referenced(session, {f.sha256 for f in part})
            doomed.extend(f for f in part if f.sha256 not in used)
    temp = stale_temp(blobs, before)
    tally.orphans += len(doomed)
    tally.blobs += len(doomed)
    if not apply:
        tally.freed += sum(f.size for f in doomed)
        return
    freed = delete_files([f.path for f in doomed] + temp, durable=False)
    tally.freed += freed
    if doomed or temp:
        with sessions() as session:
            record_action(
                session,
                actor,
                "retention.purge-orphans",
                "blobs",
                at=now,
                before={"written_before": before.isoformat()},
                after={
                    "blobs_deleted": len(doomed),
                    "temp_files_deleted": len(temp),
                    "bytes": freed,
                },
                reason=reason,
            )
            session.commit()


def _day(value: datetime) -> str:
    return value.astimezone(UTC).date().isoformat()


def describe(report: PurgeReport, out: Callable[[str], None]) -> None:
    """The report in plain words for an admin."""
    verb = "purged" if report.applied else "would purge"
    out(
        f"{verb}: {len(report.tickets)} ticket(s) closed before {_day(report.cutoff)}, "
        f"{report.ticketless_messages} message(s) without a ticket"
    )
    out(f"  message bodies      {report.messages}")
    out(f"  attachments         {report.attachments}")
    raw_note = f" (raw_message_days: before {_day(report.raw_cutoff)})" if report.raw_cutoff else ""
    out(f"  raw messages        {report.raw_messages}{raw_note}")
    out(f"  severity labels     {report.labels}")
    out(f"  outbox bodies       {report.outbox_bodies}")
    out(
        f"  blob files          {report.blobs} ({report.orphan_blobs} unreferenced), "
        f"{_size(report.bytes_freed)} {'freed' if report.applied else 'to free'}"
    )
    if report.tickets:
        shown = ", ".join(report.tickets[:20])
        more = f" and {len(report.tickets) - 20} more" if len(report.tickets) > 20 else ""
        out(f"  tickets: {shown}{more}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


__all__ = [
    "BlobFile",
    "PurgeReport",
    "blob_files",
    "blob_size",
    "delete_files",
    "describe",
    "purge",
    "stale_temp",
    "still_referenced",
]
