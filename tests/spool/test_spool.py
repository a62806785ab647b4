"""Specifications for gateway.intake.spool: durability, claiming, retries, quarantine and
back-pressure.

Everything runs against the real filesystem under tmp_path; nothing in ``os`` is mocked. Faults a
root user cannot provoke with chmod are injected through the spool's ``write_fault`` hook or by
replacing a spool directory with a regular file.
"""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import clock
from gateway.intake.entry import new_id
from gateway.intake.spool import (
    Entry,
    Envelope,
    Spool,
    SpoolError,
    SpoolFullError,
    SpoolWriteError,
    _Prepared,
)

RECEIVED = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)


def make_envelope(**overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "channel": "smtp",
        "received_at": RECEIVED,
        "mail_from": "alice@example.com",
        "recipients": ("support@example.net",),
        "peer": "192.0.2.10",
    }
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


def message(n: int) -> bytes:
    return f"From: a@example.com\r\nSubject: message {n}\r\n\r\nbody {n}\r\n".encode()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", min_free_bytes=0)
    yield s
    s.close()


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def raise_oserror(code: int) -> Callable[[], None]:
    def fault() -> None:
        raise OSError(code, os.strerror(code))

    return fault


# ------------------------------------------------------------------------------- roundtrip


def test_enqueued_message_can_be_claimed_read_and_completed(spool: Spool) -> None:
    envelope = make_envelope(meta=(("imap_uid", "42"),), channel_key=None)
    entry_id = spool.enqueue(b"raw message", envelope)

    entry = spool.claim()

    assert entry is not None
    assert entry.id == entry_id
    assert entry.envelope == envelope
    assert entry.attempts == 0
    assert entry.size == len(b"raw message")
    assert entry.path.parent == spool.claimed_dir
    assert spool.read_raw(entry) == b"raw message"
    spool.complete(entry)
    assert spool.depth() == 0
    assert spool.claim() is None


def test_a_batch_of_entries_is_completed_at_once_even_if_one_is_already_gone(
    spool: Spool,
) -> None:
    for i in range(5):
        spool.enqueue(f"message {i}".encode(), make_envelope())
    entries = [spool.claim() for _ in range(5)]
    assert all(entries)
    claimed = [e for e in entries if e is not None]
    claimed[2].path.unlink()  # recover() or a crash already dealt with this one
    spool.complete_many(claimed)
    assert spool.depth() == 0
    assert files_in(spool.claimed_dir) == []
    assert spool.claim() is None


def test_raw_bytes_come_back_exactly_including_newlines_and_binary(spool: Spool) -> None:
    raw = b'\n\r\n\x00\xff{"v":1}\nSubject: x\r\n\r\n' + bytes(range(256))
    spool.enqueue(raw, make_envelope(mail_from=""))

    entry = spool.claim()

    assert entry is not None
    assert spool.read_raw(entry) == raw
    assert entry.envelope.mail_from == ""


def test_enqueue_is_visible_only_in_incoming_and_leaves_nothing_in_tmp(spool: Spool) -> None:
    entry_id = spool.enqueue(message(1), make_envelope())

    assert files_in(spool.incoming_dir) == [f"{entry_id}.msg"]
    assert files_in(spool.tmp_dir) == []
    assert files_in(spool.claimed_dir) == []


def test_claim_returns_entries_oldest_first(spool: Spool) -> None:
    ids = [spool.enqueue(message(n), make_envelope()) for n in range(5)]

    claimed = [spool.claim() for _ in ids]

    assert [entry.id for entry in claimed if entry is not None] == ids
    assert ids == sorted(ids)


def test_claim_returns_none_when_spool_is_empty(spool: Spool) -> None:
    assert spool.claim() is None


def test_claim_sees_entries_enqueued_after_an_empty_claim(spool: Spool) -> None:
    assert spool.claim() is None
    entry_id = spool.enqueue(message(1), make_envelope())

    entry = spool.claim()

    assert entry is not None and entry.id == entry_id


def test_pending_lists_incoming_and_claimed_oldest_first(spool: Spool) -> None:
    ids = [spool.enqueue(message(n), make_envelope()) for n in range(3)]
    first = spool.claim()
    assert first is not None

    assert [entry.id for entry in spool.pending()] == ids
    assert spool.depth() == 3


def test_get_finds_an_entry_wherever_it_is_and_rejects_path_like_ids(spool: Spool) -> None:
    entry_id = spool.enqueue(message(1), make_envelope())
    found = spool.get(entry_id)
    assert found is not None and found.path.parent == spool.incoming_dir

    entry = spool.claim()
    assert entry is not None
    found = spool.get(entry_id)
    assert found is not None and found.path.parent == spool.claimed_dir

    spool.quarantine(entry, stage="parse", error="broken MIME")
    found = spool.get(entry_id)
    assert found is not None and found.path.parent == spool.quarantine_dir

    assert spool.get("../incoming/" + entry_id) is None
    assert spool.get("nope") is None


def test_spool_directories_are_private_to_the_daemon_user(spool: Spool) -> None:
    for directory in (spool.tmp_dir, spool.incoming_dir, spool.claimed_dir, spool.quarantine_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


# ------------------------------------------------------------------------------- crash safety


def test_tmp_leftovers_are_never_claimed_and_recover_deletes_them(spool: Spool) -> None:
    # What a crash in the middle of a write leaves behind: a half-written file in tmp/.
    leftover = spool.tmp_dir / "00000000000000000001-000000000000.123.tmp"
    leftover.write_bytes(b'{"v":1,"id":"00000000000000000001-000000000000"')

    assert spool.claim() is None
    assert spool.recover() == 0
    assert files_in(spool.tmp_dir) == []


def test_claimed_entries_return_to_incoming_after_a_crash_and_recover(tmp_path: Path) -> None:
    before_crash = Spool(tmp_path, min_free_bytes=0)
    entry_id = before_crash.enqueue(message(1), make_envelope())
    assert before_crash.claim() is not None
    # The worker "crashes": the entry is still in claimed/ and nobody completes it.

    after_restart = Spool(tmp_path, min_free_bytes=0)
    assert after_restart.claim() is None
    assert after_restart.recover() == 1

    entry = after_restart.claim()
    assert entry is not None and entry.id == entry_id
    assert entry.attempts == 0


def test_claimed_before_names_older_entries_claimed_within_the_window(spool: Spool) -> None:
    first, second, third = (spool.enqueue(message(n), make_envelope()) for n in range(3))
    claimed = [spool.claim(), spool.claim()]
    assert [entry.id for entry in claimed if entry] == [first, second]

    assert spool.claimed_before(third, 60.0) == [first, second]
    assert spool.claimed_before(second, 60.0) == [first]
    assert spool.claimed_before(first, 60.0) == []
    assert spool.claimed_before(third, 60.0, excluding={first}) == [second]
    assert spool.claimed_before(third, 0.0) == []  # every claim is older than no time at all


def test_release_puts_entry_back_without_counting_an_attempt(spool: Spool) -> None:
    entry_id = spool.enqueue(message(1), make_envelope())
    entry = spool.claim()
    assert entry is not None

    spool.release(entry)

    again = spool.claim()
    assert again is not None and again.id == entry_id
    assert again.attempts == 0


def test_released_entry_keeps_its_place_ahead_of_newer_entries(spool: Spool) -> None:
    older = spool.enqueue(message(1), make_envelope())
    spool.enqueue(message(2), make_envelope())
    entry = spool.claim()
    assert entry is not None and entry.id == older

    spool.release(entry)

    again = spool.claim()
    assert again is not None and again.id == older


# ------------------------------------------------------------------------------- retries


def test_fail_counts_attempts_across_restarts_and_quarantines_at_max_attempts(
    tmp_path: Path,
) -> None:
    entry_id = Spool(tmp_path, min_free_bytes=0).enqueue(message(1), make_envelope())

    for attempt in (1, 2):
        # A fresh Spool per attempt: the count must live on disk, not in memory.
        spool = Spool(tmp_path, min_free_bytes=0, max_attempts=3)
        entry = spool.claim()
        assert entry is not None and entry.attempts == attempt - 1
        assert spool.fail(entry, stage="classify", error=f"boom {attempt}") is False
        assert spool.get(entry_id) is not None

    spool = Spool(tmp_path, min_free_bytes=0, max_attempts=3)
    entry = spool.claim()
    assert entry is not None
    assert entry.attempts == 2
    assert entry.last_stage == "classify" and entry.last_error == "boom 2"
    assert spool.fail(entry, stage="persist", error="IntegrityError: nope") is True

    assert spool.depth() == 0
    assert spool.claim() is None
    (record,) = Spool(tmp_path, min_free_bytes=0).quarantined()
    assert record.id == entry_id
    assert record.attempts == 3
    assert record.stage == "persist"
    assert record.error == "IntegrityError: nope"
    assert record.envelope == make_envelope()
    assert record.size == len(message(1))
    assert clock.now() - record.quarantined_at < timedelta(minutes=1)


def test_failed_entry_keeps_its_raw_bytes_and_leaves_no_tmp_files(spool: Spool) -> None:
    spool.enqueue(message(7), make_envelope())
    entry = spool.claim()
    assert entry is not None

    spool.fail(entry, stage="parse", error="x")

    again = spool.claim()
    assert again is not None
    assert spool.read_raw(again) == message(7)
    assert files_in(spool.tmp_dir) == []
    assert files_in(spool.claimed_dir) == [again.path.name]


def test_quarantine_moves_an_entry_immediately_with_stage_and_error(spool: Spool) -> None:
    entry_id = spool.enqueue(message(1), make_envelope())
    entry = spool.claim()
    assert entry is not None

    spool.quarantine(entry, stage="parse", error="no headers")

    assert spool.depth() == 0
    assert spool.quarantine_count() == 1
    record = spool.quarantine_record(entry_id)
    assert record is not None
    assert (record.stage, record.error, record.attempts) == ("parse", "no headers", 0)


def test_one_poison_message_does_not_block_the_others(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0, max_attempts=2)
    poison = spool.enqueue(b"poison", make_envelope())
    good = spool.enqueue(message(1), make_envelope())

    processed: list[str] = []
    while (entry := spool.claim()) is not None:
        if spool.read_raw(entry) == b"poison":
            spool.fail(entry, stage="parse", error="cannot parse")
        else:
            processed.append(entry.id)
            spool.complete(entry)

    assert processed == [good]
    assert [record.id for record in spool.quarantined()] == [poison]


def test_replay_returns_a_quarantined_entry_with_attempts_reset(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0, max_attempts=1)
    entry_id = spool.enqueue(message(1), make_envelope())
    entry = spool.claim()
    assert entry is not None
    assert spool.fail(entry, stage="route", error="no queue") is True

    assert spool.replay(entry_id) is True

    assert spool.quarantine_count() == 0
    replayed = spool.claim()
    assert replayed is not None
    assert replayed.id == entry_id
    assert replayed.attempts == 0
    assert spool.read_raw(replayed) == message(1)


def test_replay_of_an_unknown_id_returns_false(spool: Spool) -> None:
    assert spool.replay("00000000000000000001-000000000000") is False
    assert spool.replay("../../etc/passwd") is False


def test_a_corrupt_entry_is_parked_in_quarantine_instead_of_blocking_claims(
    spool: Spool,
) -> None:
    (spool.incoming_dir / "00000000000000000001-000000000000.msg").write_bytes(b"garbage")
    good = spool.enqueue(message(1), make_envelope())

    entry = spool.claim()

    assert entry is not None and entry.id == good
    (record,) = spool.quarantined()
    assert record.id == "00000000000000000001-000000000000"
    assert record.stage == "spool"
    assert "unreadable" in record.error


# ------------------------------------------------------------------------------- concurrency


def test_threads_claiming_concurrently_never_get_the_same_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False, min_free_bytes=0)
    ids = {spool.enqueue(message(n), make_envelope()) for n in range(200)}
    claimed: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def worker(out: list[str]) -> None:
        own = Spool(tmp_path, fsync=False, min_free_bytes=0)  # own cache, like another process
        start.wait()
        while (entry := own.claim()) is not None:
            out.append(entry.id)

    threads = [threading.Thread(target=worker, args=(out,)) for out in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = [entry_id for out in claimed for entry_id in out]
    assert len(everything) == len(set(everything)) == len(ids)
    assert set(everything) == ids


def test_threads_sharing_one_spool_never_get_the_same_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False, min_free_bytes=0)
    ids = {spool.enqueue(message(n), make_envelope()) for n in range(200)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (entry := spool.claim()) is not None:
            with lock:
                claimed.append(entry.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(claimed) == len(set(claimed))
    assert set(claimed) == ids


def _claim_all_in_child(root: str, out: str, start: multiprocessing.synchronize.Barrier) -> None:
    spool = Spool(Path(root), fsync=False, min_free_bytes=0)
    start.wait()
    ids = []
    while (entry := spool.claim()) is not None:
        ids.append(entry.id)
    Path(out).write_text("\n".join(ids))


def test_processes_claiming_concurrently_never_get_the_same_entry(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, fsync=False, min_free_bytes=0)
    ids = {spool.enqueue(message(n), make_envelope()) for n in range(400)}
    # spawn, not fork: a child must not inherit the parent's threads or locks.
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    outs = [tmp_path / f"claimed-{n}.txt" for n in range(2)]
    children = [
        context.Process(target=_claim_all_in_child, args=(str(root), str(out), start))
        for out in outs
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0

    per_child = [out.read_text().split() for out in outs]
    everything = [entry_id for ids_ in per_child for entry_id in ids_]
    assert len(everything) == len(set(everything))
    assert set(everything) == ids


# ------------------------------------------------------------------------------- enqueue_async


def test_enqueue_async_from_50_coroutines_gives_50_durable_entries_with_grouped_fsyncs(
    spool: Spool,
) -> None:
    async def producers() -> list[str]:
        return await asyncio.gather(
            *(spool.enqueue_async(message(n), make_envelope()) for n in range(50))
        )

    ids = asyncio.run(producers())

    assert len(set(ids)) == 50
    assert files_in(spool.incoming_dir) == sorted(f"{entry_id}.msg" for entry_id in ids)
    assert files_in(spool.tmp_dir) == []
    assert spool.file_fsyncs == 50
    assert 1 <= spool.dir_fsyncs < 50
    by_id = {entry.id: entry for entry in spool.pending()}
    assert {spool.read_raw(by_id[entry_id]) for entry_id in ids} == {message(n) for n in range(50)}


def test_enqueue_many_makes_a_group_durable_with_one_fsync_of_incoming(spool: Spool) -> None:
    outcomes = spool.enqueue_many([(message(n), make_envelope()) for n in range(20)])

    assert all(isinstance(outcome, str) for outcome in outcomes)
    ids = [str(outcome) for outcome in outcomes]
    assert files_in(spool.incoming_dir) == sorted(f"{entry_id}.msg" for entry_id in ids)
    assert files_in(spool.tmp_dir) == []
    assert (spool.file_fsyncs, spool.dir_fsyncs) == (20, 1)
    by_id = {entry.id: entry for entry in spool.pending()}
    assert [spool.read_raw(by_id[entry_id]) for entry_id in ids] == [message(n) for n in range(20)]


def test_enqueue_many_answers_each_message_in_order_when_some_fail(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose fsync fails is that message's SpoolError, in its place; it leaves nothing
    in the spool, and the rest of the group is durable."""
    sync = spool._sync_tmp

    def sync_unless_odd(prepared: _Prepared) -> None:
        if any(prepared.tmp_path.read_bytes().endswith(message(n)) for n in (1, 3)):
            raise OSError(errno.EIO, "injected fsync failure")
        sync(prepared)

    monkeypatch.setattr(spool, "_sync_tmp", sync_unless_odd)
    outcomes = spool.enqueue_many([(message(n), make_envelope()) for n in range(5)])

    assert [isinstance(outcome, SpoolWriteError) for outcome in outcomes] == [
        False, True, False, True, False
    ]
    by_id = {entry.id: entry for entry in spool.pending()}
    kept = [outcome for outcome in outcomes if isinstance(outcome, str)]
    assert [spool.read_raw(by_id[entry_id]) for entry_id in kept] == [
        message(0), message(2), message(4)
    ]
    assert files_in(spool.tmp_dir) == []


def test_enqueue_many_over_the_high_water_mark_refuses_what_does_not_fit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0, high_water_bytes=3 * len(message(0)) + 600)
    try:
        outcomes = spool.enqueue_many([(message(n), make_envelope()) for n in range(10)])
        durable = [outcome for outcome in outcomes if isinstance(outcome, str)]
        assert durable and len(durable) < 10
        assert all(isinstance(outcome, SpoolFullError) for outcome in outcomes[len(durable):])
        assert len(spool.pending()) == len(durable)
    finally:
        spool.close()


def test_a_file_whose_fsync_fails_fails_only_its_own_sender_in_a_grouped_write(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's files are fsynced in lanes; each outcome must still reach its own sender."""
    failing = {n for n in range(40) if n % 3 == 0}
    sync = spool._sync_tmp

    def sync_unless_marked(prepared: _Prepared) -> None:
        if any(prepared.tmp_path.read_bytes().endswith(message(n)) for n in failing):
            raise OSError(errno.EIO, "injected fsync failure")
        sync(prepared)

    monkeypatch.setattr(spool, "_sync_tmp", sync_unless_marked)

    async def producers() -> list[str | BaseException]:
        return await asyncio.gather(
            *(spool.enqueue_async(message(n), make_envelope()) for n in range(40)),
            return_exceptions=True)

    outcomes = asyncio.run(producers())

    assert [isinstance(o, SpoolWriteError) for o in outcomes] == [n in failing
                                                                  for n in range(40)]
    assert files_in(spool.tmp_dir) == []
    by_id = {entry.id: entry for entry in spool.pending()}
    assert {spool.read_raw(by_id[o]) for o in outcomes if isinstance(o, str)} == {
        message(n) for n in range(40) if n not in failing}


def test_enqueue_async_serves_several_event_loops_in_several_threads(spool: Spool) -> None:
    results: list[list[str]] = [[] for _ in range(3)]

    def run_loop(out: list[str]) -> None:
        async def produce() -> list[str]:
            return await asyncio.gather(
                *(spool.enqueue_async(message(n), make_envelope()) for n in range(10))
            )

        out.extend(asyncio.run(produce()))

    threads = [threading.Thread(target=run_loop, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = [entry_id for out in results for entry_id in out]
    assert len(set(everything)) == 30
    assert spool.depth() == 30


def test_enqueue_async_reports_write_faults_per_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0, write_fault=raise_oserror(errno.ENOSPC))

    async def attempt() -> None:
        await spool.enqueue_async(message(1), make_envelope())

    with pytest.raises(SpoolFullError):
        asyncio.run(attempt())
    assert files_in(spool.incoming_dir) == []
    assert files_in(spool.tmp_dir) == []
    spool.close()


# The writer thread really dies here, and pytest rightly reports an unhandled thread exception.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dying_writer_thread_fails_its_callers_instead_of_hanging_them(tmp_path: Path) -> None:
    kills = [SystemExit("writer thread killed")]

    def kill_writer_once() -> None:
        if kills:
            raise kills.pop()

    spool = Spool(tmp_path, min_free_bytes=0, write_fault=kill_writer_once)

    async def attempt() -> str:
        return await asyncio.wait_for(spool.enqueue_async(message(1), make_envelope()), 5)

    with pytest.raises(SpoolWriteError):
        asyncio.run(attempt())
    # The next caller gets a fresh writer thread.
    entry_id = asyncio.run(attempt())
    assert spool.get(entry_id) is not None
    spool.close()


def test_enqueue_async_after_close_raises_spool_write_error(spool: Spool) -> None:
    spool.close()

    async def attempt() -> None:
        await spool.enqueue_async(message(1), make_envelope())

    with pytest.raises(SpoolWriteError):
        asyncio.run(attempt())


def test_close_finishes_writes_already_submitted(spool: Spool) -> None:
    async def produce_then_close() -> list[str]:
        tasks = [
            asyncio.ensure_future(spool.enqueue_async(message(n), make_envelope()))
            for n in range(10)
        ]
        await asyncio.sleep(0)  # let every task submit its write
        await asyncio.to_thread(spool.close)
        return await asyncio.gather(*tasks)

    ids = asyncio.run(produce_then_close())

    assert len(set(ids)) == 10
    assert spool.depth() == 10


# ------------------------------------------------------------------------------- back-pressure


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_enqueue_reports_a_full_disk_as_spool_full_and_leaves_nothing_behind(
    tmp_path: Path, code: int
) -> None:
    spool = Spool(tmp_path, min_free_bytes=0, write_fault=raise_oserror(code))

    with pytest.raises(SpoolFullError):
        spool.enqueue(message(1), make_envelope())

    assert files_in(spool.incoming_dir) == []
    assert files_in(spool.tmp_dir) == []


def test_enqueue_reports_other_io_errors_as_spool_write_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0, write_fault=raise_oserror(errno.EIO))

    with pytest.raises(SpoolWriteError):
        spool.enqueue(message(1), make_envelope())

    assert files_in(spool.incoming_dir) == []
    assert files_in(spool.tmp_dir) == []


def test_enqueue_into_an_unwritable_spool_raises_spool_write_error(spool: Spool) -> None:
    # chmod does not stop root, so break the spool in a way that stops everyone: incoming/ is
    # no longer a directory, and the rename into it fails with ENOTDIR.
    spool.incoming_dir.rmdir()
    spool.incoming_dir.write_bytes(b"")

    with pytest.raises(SpoolWriteError):
        spool.enqueue(message(1), make_envelope())

    assert files_in(spool.tmp_dir) == []


def test_enqueue_with_an_unwritable_tmp_dir_raises_spool_write_error(spool: Spool) -> None:
    spool.tmp_dir.rmdir()
    spool.tmp_dir.write_bytes(b"")

    with pytest.raises(SpoolWriteError):
        spool.enqueue(message(1), make_envelope())

    assert files_in(spool.incoming_dir) == []


def test_enqueue_above_the_high_water_mark_raises_spool_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path, high_water_bytes=10_000, min_free_bytes=0)
    spool.enqueue(b"x" * 4000, make_envelope())
    spool.enqueue(b"x" * 4000, make_envelope())

    with pytest.raises(SpoolFullError):
        spool.enqueue(b"x" * 4000, make_envelope())

    assert spool.depth() == 2


def test_completing_entries_makes_room_below_the_high_water_mark(tmp_path: Path) -> None:
    spool = Spool(tmp_path, high_water_bytes=10_000, min_free_bytes=0)
    spool.enqueue(b"x" * 4000, make_envelope())
    spool.enqueue(b"x" * 4000, make_envelope())
    entry = spool.claim()
    assert entry is not None

    spool.complete(entry)

    spool.enqueue(b"x" * 4000, make_envelope())
    assert spool.depth() == 2


def test_high_water_mark_counts_entries_already_on_disk_at_startup(tmp_path: Path) -> None:
    Spool(tmp_path, min_free_bytes=0).enqueue(b"x" * 8000, make_envelope())

    restarted = Spool(tmp_path, high_water_bytes=10_000, min_free_bytes=0)

    with pytest.raises(SpoolFullError):
        restarted.enqueue(b"x" * 4000, make_envelope())


def test_enqueue_refuses_when_free_disk_space_is_below_the_minimum(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    spool = Spool(tmp_path, min_free_bytes=free * 2)

    with pytest.raises(SpoolFullError):
        spool.enqueue(message(1), make_envelope())

    assert files_in(spool.incoming_dir) == []


def test_spool_full_and_write_errors_are_spool_errors() -> None:
    assert issubclass(SpoolFullError, SpoolError)
    assert issubclass(SpoolWriteError, SpoolError)


# ------------------------------------------------------------------------------- envelope

_text = st.text(max_size=40)


@settings(max_examples=40, deadline=None)
@given(
    channel=_text,
    received_at=st.datetimes(timezones=st.just(UTC)),
    mail_from=st.none() | _text,
    recipients=st.lists(_text, max_size=4).map(tuple),
    peer=st.none() | _text,
    channel_key=st.none() | _text,
    meta=st.lists(st.tuples(_text, _text), max_size=4).map(tuple),
)
def test_envelope_survives_a_json_roundtrip(
    channel: str,
    received_at: datetime,
    mail_from: str | None,
    recipients: tuple[str, ...],
    peer: str | None,
    channel_key: str | None,
    meta: tuple[tuple[str, str], ...],
) -> None:
    envelope = Envelope(
        channel=channel,
        received_at=received_at,
        mail_from=mail_from,
        recipients=recipients,
        peer=peer,
        channel_key=channel_key,
        meta=meta,
    )

    assert Envelope.from_json(envelope.to_json()) == envelope


def test_envelope_rejects_a_naive_received_at() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Envelope(channel="smtp", received_at=datetime(2024, 1, 1))


def test_envelope_normalises_received_at_to_utc() -> None:
    paris = timezone(timedelta(hours=2))
    envelope = Envelope(channel="pipe", received_at=datetime(2024, 5, 17, 11, 30, tzinfo=paris))

    assert envelope.received_at == RECEIVED
    assert envelope.received_at.tzinfo == UTC


def test_envelope_from_json_names_the_bad_key() -> None:
    data = make_envelope().to_json() | {"recipients": "not-a-list"}

    with pytest.raises(ValueError, match="recipients"):
        Envelope.from_json(data)


def test_entries_are_frozen(spool: Spool) -> None:
    spool.enqueue(message(1), make_envelope())
    entry = spool.claim()
    assert isinstance(entry, Entry)

    with pytest.raises(AttributeError):
        entry.attempts = 5  # type: ignore[misc]


# ---- streamed entries (SMTP DATA past 256 KiB; issue 20 outcome 5) -----------------------------


def test_a_streamed_entry_is_invisible_until_enqueued_then_reads_back_whole(spool: Spool) -> None:
    stream = spool.open_stream(make_envelope())
    pieces = [b"Subject: big\r\n\r\n", bytes(range(256)) * 4096, b"the end\r\n"]
    for piece in pieces:
        stream.write(piece)
    assert spool.pending() == []  # in tmp/ only: a crash now loses nothing acknowledged
    final = make_envelope(mail_from="late@example.com")
    entry_id = asyncio.run(spool.enqueue_stream_async(stream, final))
    (entry,) = spool.pending()
    assert entry.id == entry_id
    assert spool.read_raw(entry) == b"".join(pieces)
    assert entry.size == sum(map(len, pieces))
    assert entry.envelope == final  # the envelope given at the end is the one recorded
    assert files_in(spool.tmp_dir) == []
    # The padded header survives a rewrite (fail re-encodes it without the padding).
    claimed = spool.claim()
    assert claimed is not None
    spool.fail(claimed, stage="parse", error="boom")
    (again,) = spool.pending()
    assert spool.read_raw(again) == b"".join(pieces) and again.attempts == 1


def test_an_aborted_stream_leaves_nothing_and_gives_its_room_back(tmp_path: Path) -> None:
    small = Spool(tmp_path / "s", high_water_bytes=64 * 1024)
    try:
        stream = small.open_stream(make_envelope())
        stream.write(b"x" * 40 * 1024)
        stream.abort()
        assert files_in(small.tmp_dir) == [] and small.pending() == []
        # Its 40 KiB were released: another as large still fits under the 64 KiB mark.
        other = small.open_stream(make_envelope())
        other.write(b"y" * 40 * 1024)
        with pytest.raises(SpoolFullError):
            other.write(b"y" * 40 * 1024)
        other.abort()
    finally:
        small.close()


def test_entry_ids_never_repeat_in_a_process_nor_after_a_fork() -> None:
    # Thousands of ids within the clock's resolution still differ (the suffix counts), and a
    # forked child (multiprocessing's default on Linux) does not count on from its parent's.
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"\d{20}-[0-9a-f]{12}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next suffix, to the parent
        os.write(write, new_id().split("-")[1].encode())
        os._exit(0)
    os.close(write)
    child_suffix = int(os.read(read, 64), 16)
    os.waitpid(pid, 0)
    parent_suffix = int(new_id().split("-")[1], 16)
    assert abs(child_suffix - parent_suffix) > 1_000_000  # a fresh random start, not ours + 1
