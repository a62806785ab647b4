"""The blob store: a name never outlives a crash without its bytes, and a raw message's blob is
its spool file, hard-linked, not a copy (gateway/intake/blobs.py).

The spool made a raw message's bytes durable before the sender was acknowledged; the worker
gives them a second name under the blob store and syncs that name before the ticket that names
the blob commits. These tests pin what that rests on: the link is the spool's own inode, the
spool never edits a file in place, a filesystem without links still gets the bytes, and names
are synced in the right order.
"""

from __future__ import annotations

import errno
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.intake import blobs as blob_module
from gateway.intake.blobs import SPOOLED, BlobStore
from gateway.intake.spool import Entry, Envelope, Spool
from tests.helpers import Gateway, make_email

# A named instant: the envelope's arrival; nothing here reads the clock.
ARRIVED = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def envelope() -> Envelope:
    return Envelope(channel="smtp", received_at=ARRIVED, mail_from="a@example.net")


def claimed(spool: Spool, raw: bytes) -> Entry:
    """`raw` spooled and claimed, as the worker holds it."""
    spool.enqueue(raw, envelope())
    entry = spool.claim()
    assert entry is not None
    return entry


@pytest.fixture
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the blob store does to the disk, in order: "sync" (a syncfs), "name" (a rename
    that makes a written blob's name), "link" (a linked name made)."""
    events: list[str] = []
    real_syncfs, real_replace, real_link = blob_module._syncfs, os.replace, os.link
    if real_syncfs is None:
        pytest.fail("syncfs(2) is missing: put_many would fall back to fsync per file")

    def syncfs(fd: int) -> int:
        events.append("sync")
        return real_syncfs(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("name")
        real_replace(src, dst)

    def link(src: str | Path, dst: str | Path) -> None:
        real_link(src, dst)
        events.append("link")  # a name made

    monkeypatch.setattr(blob_module, "_syncfs", syncfs)
    monkeypatch.setattr(blob_module.os, "replace", replace)
    monkeypatch.setattr(blob_module.os, "link", link)
    return events


def test_a_blob_is_named_only_after_its_bytes_are_on_disk(
    tmp_path: Path, disk_events: list[str]
) -> None:
    """A blob found under its digest is never written again (put_many skips it), so a name must
    never outlive a crash without its bytes: the batch's bytes are synced before any rename
    makes a name, and the names before put_many returns (the ticket transaction that names
    them commits only after)."""
    store = BlobStore(tmp_path / "blobs")
    items = [(b"raw message %d" % i, hashlib.sha256(b"raw message %d" % i).hexdigest())
             for i in range(3)]
    store.put_many(items)
    assert disk_events == ["sync", "name", "name", "name", "sync"]
    assert [store.get(digest) for _, digest in items] == [data for data, _ in items]
    disk_events.clear()
    store.put_many(items)  # already there: nothing written, nothing synced
    assert disk_events == []


def test_a_drained_message_keeps_its_spool_file_as_its_raw_blob(gateway: Gateway) -> None:
    raw = make_email(subject="Scanner down", message_id="<link1@x>")
    gateway.ingest(raw)
    (spooled,) = list((gateway.spool.root / "incoming").iterdir())
    inode = spooled.stat().st_ino
    gateway.drain()

    blobs = gateway.worker.blobs
    digest = hashlib.sha256(raw).hexdigest()
    kept = blobs.file(digest)
    assert kept is not None and kept.name == digest + SPOOLED
    assert kept.stat().st_ino == inode, "the spool's own inode, not a copy"
    assert kept.stat().st_nlink == 1, "the spool deleted its name once the ticket committed"
    assert blobs.get(digest) == raw
    assert not blobs.path(digest).exists()
    assert [m.raw_sha256 for m in messages(gateway)] == [digest]


def messages(gateway: Gateway) -> list[Any]:
    from sqlalchemy import select

    from gateway.storage.models import Message

    with gateway.session() as s:
        return list(s.execute(select(Message)).scalars())


def test_a_failed_attempt_rewrites_the_entry_but_never_the_linked_blob(tmp_path: Path) -> None:
    """A header change (an attempt counted) is a new file renamed over the entry's name: the
    blob linked before it keeps the bytes and the header it was linked with."""
    spool = Spool(tmp_path / "spool", fsync=False, max_attempts=5)
    store = BlobStore(tmp_path / "blobs", fsync=False)
    raw = b"Subject: x\r\n\r\nthe printer is on fire\r\n"
    digest = hashlib.sha256(raw).hexdigest()
    entry = claimed(spool, raw)
    store.put_many([(raw, digest)], {digest: entry.path})
    kept = store.file(digest)
    assert kept is not None
    linked_header = kept.read_bytes().partition(b"\n")[0]

    assert spool.fail(entry, stage="persist", error="database said no") is False
    again = spool.claim()
    assert again is not None and again.attempts == 1
    assert again.path.stat().st_ino != kept.stat().st_ino
    assert store.get(digest) == raw
    assert kept.read_bytes().partition(b"\n")[0] == linked_header
    spool.complete(again)
    assert store.get(digest) == raw
    spool.close()


def test_where_no_link_can_be_made_the_bytes_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool on another filesystem (EXDEV) still leaves a blob: the bytes, written."""
    spool = Spool(tmp_path / "spool", fsync=False)
    store = BlobStore(tmp_path / "blobs", fsync=False)
    raw = b"Subject: y\r\n\r\nother disk\r\n"
    digest = hashlib.sha256(raw).hexdigest()
    entry = claimed(spool, raw)

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(blob_module.os, "link", cross_device)
    store.put_many([(raw, digest)], {digest: entry.path})
    assert store.file(digest) == store.path(digest)
    assert store.path(digest).read_bytes() == raw
    spool.close()


def test_linked_names_are_synced_once_and_only_written_bytes_first(
    tmp_path: Path, disk_events: list[str]
) -> None:
    """The spool synced a linked file's bytes long ago: a batch of only links costs one sync
    (its names); written bytes are still synced before any rename names them."""
    spool = Spool(tmp_path / "spool")
    store = BlobStore(tmp_path / "blobs")
    raws = [b"Subject: %d\r\n\r\nbody\r\n" % i for i in range(2)]
    sources = {hashlib.sha256(raw).hexdigest(): claimed(spool, raw).path for raw in raws}
    items = [(raw, hashlib.sha256(raw).hexdigest()) for raw in raws]
    store.put_many(items, sources)
    assert disk_events == ["link", "link", "sync"]

    disk_events.clear()
    attachment = (b"%PDF attachment", hashlib.sha256(b"%PDF attachment").hexdigest())
    store.put_many([*items, attachment], sources)  # the links are there already
    assert disk_events == ["sync", "name", "sync"]
    assert [store.get(d) for _, d in [*items, attachment]] == [*raws, attachment[0]]
    spool.close()
