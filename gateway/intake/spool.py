"""The durable spool: where every inbound message lives between "acknowledged" and "ticketed".

What this module owns
---------------------
Channels (SMTP/LMTP listener, pipe command, IMAP poller, Twilio webhooks) hand the spool raw bytes
and an :class:`Envelope`. :meth:`Spool.enqueue` (or :meth:`Spool.enqueue_async` from an event
loop) returns only once the message is durable on disk; only then may the channel acknowledge the
sender (SMTP 250, IMAP flag, Twilio 2xx). Workers :meth:`Spool.claim` entries, and finish them with
:meth:`Spool.complete`, :meth:`Spool.release` (defer without counting an attempt) or
:meth:`Spool.fail` (count an attempt; quarantine after ``max_attempts``). Admins list, show and
:meth:`Spool.replay` quarantined entries. The model is Mailman 3's switchboard and Postfix's queue.

What it must never do
---------------------
* Never touch the database: with the database down, intake goes on and the spool fills.
* Never make a half-written file visible: a file enters ``incoming/`` only by ``rename(2)`` from
  ``tmp/`` after its contents were fsynced, and ``enqueue`` returns only after ``incoming/`` itself
  was fsynced (the rename is durable).
* Never raise anything but :class:`SpoolFullError` / :class:`SpoolWriteError` from ``enqueue``: the
  channel maps them to *temporary* failures (SMTP 452/451, HTTP 503), never to a permanent one.
* Never lose a claimed message: every move is a rename, so a crash leaves the entry in exactly one
  directory (at worst it is processed again, which the database's dedup key absorbs).

Layout and file format
----------------------
``root/`` holds four directories, created with mode 0o700::

    tmp/         files being written (never read; deleted by recover())
    incoming/    durable entries waiting for a worker
    claimed/     entries a worker is processing (moved back by recover() after a crash)
    quarantine/  entries that failed max_attempts times, or were quarantined outright

An entry is ONE file named ``<id>.msg`` so that moving it between directories is a single atomic
rename. ``<id>`` is ``f"{wall_nanoseconds:020d}-{12 random hex digits}"`` (real time, never the
test clock): lexical order is arrival order. The file is::

    <header: one line of ASCII JSON>\\n<raw message bytes, exactly as received>

The header is ``json.dumps(..., ensure_ascii=True)`` so it can never contain a newline; its keys:
``v`` (format version, 1), ``id``, ``envelope`` (:meth:`Envelope.to_json`), ``size`` (raw bytes),
``attempts`` (failed processing attempts so far), ``last_stage``/``last_error`` (of the latest
failure, or null) and ``quarantined_at`` (ISO 8601 UTC, or null). Attempt counts, errors and the
quarantine reason therefore live in the same file as the message and survive restarts.

Changing a header (fail, quarantine, replay) never edits in place: the new file is written to
``tmp/``, fsynced, renamed over the entry's current path (which this worker owns), and only then
renamed to its next directory. A crash between the two renames leaves one complete file in the old
directory, never two files and never none.

Concurrency: many threads and many processes may share one spool directory. ``claim`` is a rename
from ``incoming/`` to ``claimed/``; the loser of a race gets ENOENT and tries the next entry.
``recover`` is meant for daemon start-up (it moves *every* claimed entry back and deletes *every*
``tmp/`` file, including those of other live processes sharing the directory).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from gateway import clock as business_clock
from gateway.intake.entry import (
    ID_RE,
    SUFFIX,
    CorruptEntryError,
    Entry,
    Envelope,
    Header,
    QuarantineRecord,
    entry_names,
    filename,
    fsync_dir,
    new_id,
    read_header,
    read_header_at,
)
from gateway.intake.faults import crash_point, spool_write_fault

if TYPE_CHECKING:
    # asyncio and the thread pool serve the listeners only (enqueue_async); they are imported
    # there, so `gateway ingest`, one process per message, does not pay for them (issue 20).
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "Entry",
    "Envelope",
    "QuarantineRecord",
    "Spool",
    "SpoolError",
    "SpoolFullError",
    "SpoolStream",
    "SpoolWriteError",
]

# Errors are stored in the header; a multi-megabyte traceback helps nobody at 3 a.m.
_MAX_ERROR_CHARS: Final = 16 * 1024
# statvfs is cheap but not free; between calls the free-space figure is reduced by what we wrote.
_STATVFS_INTERVAL_S: Final = 1.0
# Other processes sharing the directory change its size behind our running estimate; re-measure
# this often (only when a high-water mark is configured).
_RESCAN_INTERVAL_S: Final = 30.0
# Parallel fsyncs per group (enqueue_async); the journal merges them, more threads gain little.
_FSYNC_THREADS: Final = 8
# Parallel unlinks of a worker batch's completed entries (complete_many).
_UNLINK_THREADS: Final = 8
# ENOSPC: disk full; EDQUOT: quota exhausted. Both are "try later", i.e. SMTP 452 / HTTP 503.
_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


class SpoolError(Exception):
    """Base class: the spool could not do what was asked."""


class SpoolFullError(SpoolError):
    """No space, quota exhausted, or above the high-water mark: SMTP 452, HTTP 503."""


class SpoolWriteError(SpoolError):
    """Any other failure to make a message durable: SMTP 451."""


# --------------------------------------------------------------------------------------------
# asyncio hand-off
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One enqueue_async call waiting for the writer thread."""

    entry_id: str
    raw: bytes | SpoolStream  # a stream's file is already written; the writer finishes it
    envelope: Envelope
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[str]

    def settle(self, outcome: str | SpoolError) -> None:
        """Resolve the caller's future from the writer thread (futures are not thread-safe)."""
        _settle_all([(self, outcome)])


def _settle_all(settled: list[tuple[_Job, str | SpoolError]]) -> None:
    """Resolve callers' futures from the writer thread (futures are not thread-safe), one
    hand-off per event loop rather than one per job: each `call_soon_threadsafe` writes to the
    loop's wake-up socket and wakes it, and a group of 64 webhook requests woke the loop 64
    times (issue 20 outcome 2)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, str | SpoolError]]] = {}
    for job, outcome in settled:
        by_loop.setdefault(job.loop, []).append((job, outcome))

    def apply(pairs: list[tuple[_Job, str | SpoolError]]) -> None:
        for job, outcome in pairs:
            if job.future.done():  # cancelled by the caller, or already failed by a cleanup
                continue
            if isinstance(outcome, str):
                job.future.set_result(outcome)
            else:
                job.future.set_exception(outcome)

    for loop, pairs in by_loop.items():
        # A closed loop: nobody is waiting any more, and the entries (if written) are durable.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(apply, pairs)


@dataclass(frozen=True)
class _Prepared:
    """A fully written and fsynced file in tmp/, not yet visible to workers."""

    entry_id: str
    tmp_path: Path
    file_bytes: int


_STOP: Final = None  # writer-thread sentinel
# Room kept in a streamed entry's header line beyond its first encoding: the final header
# differs in `size` (up to 19 digits for 0) and in `received_at` (isoformat drops zero
# microseconds: 7 characters).
_HEADER_ROOM: Final = 32


class SpoolStream:
    """A message written to tmp/ piece by piece while it arrives (SMTP DATA of a large message),
    so the listener never holds it whole (issue 20 outcome 5).

    The header line comes first in the file but its `size` is known last: the first header is
    written padded with spaces (JSON allows whitespace before the newline) and rewritten in
    place, within the same room, when the message is complete. The file stays in tmp/, invisible
    to workers, until `Spool.enqueue_stream_async` has fsynced it with its group and renamed it.
    `write` and `abort` block: call them from a thread, never from the event loop.
    """

    def __init__(self, spool: Spool, entry_id: str, tmp_path: Path, out: IO[bytes], room: int):
        self._spool = spool
        self.entry_id = entry_id
        self._tmp_path = tmp_path
        self._out = out
        self._room = room
        self.size = 0
        self._done = False

    def write(self, data: bytes | bytearray) -> None:
        """Append message bytes. Raises SpoolFullError or SpoolWriteError (then call abort)."""
        self._spool._reserve(len(data))
        try:
            self._out.write(data)
        except OSError as exc:
            self._spool._account(-len(data))
            raise _as_spool_error(exc) from exc
        self.size += len(data)

    def abort(self) -> None:
        """Forget the message: nothing was acknowledged, so nothing is kept."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._out.close()
        with contextlib.suppress(OSError):
            self._tmp_path.unlink()
        self._spool._account(-(self._room + self.size))

    def finish(self, envelope: Envelope) -> _Prepared:
        """Writer thread: the final header in place, the file closed (its fsync is the group's)."""
        try:
            header = Header(id=self.entry_id, envelope=envelope, size=self.size).encode()
            if len(header) > self._room:
                raise SpoolWriteError(f"streamed header outgrew its room ({len(header)} bytes)")
            self._out.flush()
            crash_point("mid-spool-write")  # written, not yet fsynced nor renamed: not visible
            padded = header[:-1] + b" " * (self._room - len(header)) + b"\n"
            os.pwrite(self._out.fileno(), padded, 0)
            self._out.close()
        except BaseException as exc:
            self.abort()
            if isinstance(exc, SpoolError) or not isinstance(exc, Exception):
                raise
            raise _as_spool_error(exc) from exc
        self._done = True
        return _Prepared(self.entry_id, self._tmp_path, self._room + self.size)


# --------------------------------------------------------------------------------------------
# The spool
# --------------------------------------------------------------------------------------------


class Spool:
    """A directory of durable message files; see the module docstring for the guarantees."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        high_water_bytes: int | None = None,
        min_free_bytes: int = 64 * 1024 * 1024,
        max_attempts: int = 3,
        write_fault: Callable[[], None] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.incoming_dir = self.root / "incoming"
        self.claimed_dir = self.root / "claimed"
        self.quarantine_dir = self.root / "quarantine"
        self._fsync = fsync
        self._high_water_bytes = high_water_bytes
        self._min_free_bytes = min_free_bytes
        self._max_attempts = max_attempts
        # Tests inject failures here; GATEWAY_FAULT_SPOOL_ENOSPC does it for a whole daemon.
        self._write_fault = write_fault if write_fault is not None else spool_write_fault()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for directory in (
                self.tmp_dir,
                self.incoming_dir,
                self.claimed_dir,
                self.quarantine_dir,
            ):
                directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SpoolWriteError(
                f"cannot create spool directories under {self.root}: {exc}"
            ) from exc

        #: Number of directory fsyncs made by enqueue/enqueue_async (shows fsync grouping).
        self.dir_fsyncs = 0
        #: Number of message-file fsyncs made by enqueue/enqueue_async.
        self.file_fsyncs = 0

        # Running estimate of bytes in incoming/ + claimed/, kept without rescanning per enqueue.
        self._size_lock = threading.Lock()
        self._bytes = 0
        self._bytes_measured_at = 0.0
        self._free_bytes = 0
        self._free_measured_at = -_STATVFS_INTERVAL_S
        self._remeasure_bytes()

        # Names seen in incoming/ by the last listing; claim() pops from the front (oldest).
        # Entries enqueued later have larger ids, so they sort after everything cached; whatever
        # puts an older id back (release, fail, replay, recover) empties the cache.
        self._claim_lock = threading.Lock()
        self._candidates: deque[str] = deque()

        # Writer thread for enqueue_async, started on first use and restarted if it died.
        self._submit_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False
        # Helpers of the writer thread for fsyncing one group's files in parallel.
        self._fsync_pool: ThreadPoolExecutor | None = None

    # ---------------------------------------------------------------------------- intake

    def enqueue(self, raw: bytes, envelope: Envelope) -> str:
        """Make ``raw`` durable and return its entry id; only then may the channel acknowledge.

        Raises only SpoolFullError (try later: 452/503) or SpoolWriteError (451).
        """
        prepared = self._prepare(new_id(), raw, envelope)
        (outcome,) = self._publish([prepared])
        if isinstance(outcome, SpoolError):
            raise outcome
        return outcome

    def enqueue_many(self, items: Sequence[tuple[bytes, Envelope]]) -> list[str | SpoolError]:
        """Make several messages durable as one group, as the writer thread does for concurrent
        callers: each file written to tmp/, the files fsynced, renamed into incoming/, and
        incoming/ fsynced once for all of them. One call of `enqueue` a message cost two
        journal commits each (`gateway ingest FILE...`, issue 20: the peer bench's pipe).

        Returns each item's outcome in order: its entry id, or the SpoolError that refused it
        (SpoolFullError, SpoolWriteError). None of them is durable before this returns, so a
        caller acknowledges nothing of the group until then; the caller bounds the group's
        size (every item is in memory at once).
        """
        outcomes: list[str | SpoolError] = []
        prepared: list[tuple[int, _Prepared]] = []
        for raw, envelope in items:
            try:
                prepared.append((len(outcomes), self._prepare(new_id(), raw, envelope,
                                                              sync=False)))
                outcomes.append("")  # its place; the outcome comes once the group is durable
            except SpoolError as exc:
                outcomes.append(exc)
        errors = (self._sync_files([item for _, item in prepared]) if self._fsync
                  else [None] * len(prepared))
        synced: list[tuple[int, _Prepared]] = []
        for (slot, item), error in zip(prepared, errors, strict=True):
            if error is None:
                synced.append((slot, item))
            else:
                outcomes[slot] = error
        published = self._publish([item for _, item in synced])
        for (slot, _), outcome in zip(synced, published, strict=True):
            outcomes[slot] = outcome
        return outcomes

    async def enqueue_async(self, raw: bytes, envelope: Envelope) -> str:
        """Same contract as :meth:`enqueue`, without blocking the event loop.

        One writer thread takes every write pending at that moment, writes each file to tmp/,
        fsyncs them (several at once, so the journal commits them together), renames them all
        into incoming/ and fsyncs incoming/ once for the whole group, then resolves the callers'
        futures from their own event loops (call_soon_threadsafe). Under load a group grows while
        the previous one is being fsynced, so the flushes are shared by many concurrent callers.
        If the writer thread dies, its pending callers get SpoolWriteError and the next call
        starts a new one.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._submit(_Job(new_id(), raw, envelope, loop, future))
        return await future

    def open_stream(self, envelope: Envelope) -> SpoolStream:
        """Start an entry whose bytes arrive in pieces (blocking: call from a thread).

        `envelope` sizes the header's room; the one given to `enqueue_stream_async` is the one
        recorded. Raises SpoolFullError or SpoolWriteError, leaving nothing behind.
        """
        entry_id = new_id()
        try:
            room = len(Header(id=entry_id, envelope=envelope, size=0).encode()) + _HEADER_ROOM
        except Exception as exc:
            raise SpoolWriteError(f"cannot encode the envelope: {exc}") from exc
        self._reserve(room)
        tmp_path = self.tmp_dir / f"{entry_id}.{os.getpid()}.tmp"
        try:
            if self._write_fault is not None:
                self._write_fault()
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            out = open(fd, "wb")  # noqa: SIM115 - closed by SpoolStream.finish or abort
            out.write(b" " * (room - 1) + b"\n")  # the header's room, filled in by finish
        except BaseException as exc:
            self._account(-room)
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            if isinstance(exc, SpoolError) or not isinstance(exc, Exception):
                raise
            raise _as_spool_error(exc) from exc
        return SpoolStream(self, entry_id, tmp_path, out, room)

    async def enqueue_stream_async(self, stream: SpoolStream, envelope: Envelope) -> str:
        """`enqueue_async` for a streamed entry: same contract, same fsync groups. The writer
        thread writes its final header, fsyncs it with the group, renames it into incoming/ and
        fsyncs the directory; only then does this return. On failure the stream is aborted."""
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        try:
            self._submit(_Job(stream.entry_id, stream, envelope, loop, future))
        except SpoolError:
            stream.abort()
            raise
        return await future

    # ---------------------------------------------------------------------------- workers

    def claim(self) -> Entry | None:
        """Move the oldest incoming entry into claimed/ and return it, or None if there is none.

        Safe across threads and processes: rename(2) succeeds for exactly one claimant; the
        others get ENOENT and move on to the next name.
        """
        while True:
            name = self._next_candidate()
            if name is None:
                return None
            claimed = self.claimed_dir / name
            try:
                os.rename(self.incoming_dir / name, claimed)
            except FileNotFoundError:
                continue  # another worker (thread or process) won this one
            try:
                return read_header_at(claimed).entry(claimed)
            except FileNotFoundError:
                continue  # a concurrent recover() moved it back; it will be claimed again
            except CorruptEntryError:
                # Unreadable: it would fail forever. Park it where an admin will see it.
                with contextlib.suppress(FileNotFoundError):
                    os.rename(claimed, self.quarantine_dir / name)
                continue

    def claimed_before(self, entry_id: str, within_seconds: float,
                       excluding: Collection[str] = ()) -> list[str]:
        """Ids of the entries that arrived before `entry_id` (entry ids sort in arrival order)
        and were claimed, by any worker, in the last `within_seconds`: a claim is a rename,
        which sets the file's ctime. An older claim is a worker that hung or died. Entries in
        `excluding` (the caller's own) are not looked at."""
        found = []
        now = business_clock.wall_seconds()  # file times are real time, never shifted
        for name in entry_names(self.claimed_dir):
            other = name.removesuffix(SUFFIX)
            if other >= entry_id or other in excluding:
                continue
            try:
                claimed_at = (self.claimed_dir / name).stat().st_ctime
            except FileNotFoundError:
                continue  # committed and completed meanwhile
            if now - claimed_at < within_seconds:
                found.append(other)
        return sorted(found)

    def read_raw(self, entry: Entry) -> bytes:
        """The message bytes exactly as the channel received them."""
        try:
            with open(entry.path, "rb") as stream:
                read_header(stream)
                return stream.read()
        except (OSError, CorruptEntryError) as exc:
            raise SpoolError(f"cannot read spool entry {entry.id}: {exc}") from exc

    def complete(self, entry: Entry) -> None:
        """Processed: delete the entry.

        No directory fsync: if the unlink is lost in a crash the entry is processed again, and
        the database's dedup key turns that into a recorded duplicate, not a second ticket.
        """
        try:
            file_bytes = entry.path.stat().st_size
            entry.path.unlink()
        except FileNotFoundError:
            return  # already gone (or moved back by recover(); then it is simply redone)
        except OSError as exc:
            raise SpoolWriteError(f"cannot delete spool entry {entry.id}: {exc}") from exc
        self._account(-file_bytes)

    def complete_many(self, entries: Sequence[Entry]) -> None:
        """`complete` for a batch's entries, their unlinks side by side. Deleting a file that
        was fsynced makes ext4 free its blocks through the journal: one by one a worker batch's
        unlinks took 0.25-3 ms each here, side by side about a tenth of that (issue 20). The
        first failure is raised once every entry was tried."""
        if len(entries) <= 1:
            for entry in entries:
                self.complete(entry)
            return

        def attempt(entry: Entry) -> SpoolWriteError | None:
            try:
                self.complete(entry)
            except SpoolWriteError as exc:
                return exc
            return None

        from concurrent.futures import ThreadPoolExecutor  # not on `gateway ingest`'s path

        with ThreadPoolExecutor(
            max_workers=min(_UNLINK_THREADS, len(entries)), thread_name_prefix="spool-unlink"
        ) as pool:
            failures = [exc for exc in pool.map(attempt, entries) if exc is not None]
        if failures:
            raise failures[0]

    def release(self, entry: Entry) -> None:
        """Put a claimed entry back without counting an attempt (e.g. database down: Defer)."""
        try:
            os.rename(entry.path, self.incoming_dir / filename(entry.id))
        except FileNotFoundError:
            return  # already moved back by recover()
        except OSError as exc:
            raise SpoolWriteError(f"cannot release spool entry {entry.id}: {exc}") from exc
        self._forget_candidates()

    def fail(self, entry: Entry, *, stage: str, error: str) -> bool:
        """Count a failed attempt; back to incoming/, or quarantine at max_attempts.

        Returns True if the entry was quarantined.
        """
        try:
            header = read_header_at(entry.path)
        except FileNotFoundError:
            return False  # moved back by recover(): it will be retried anyway
        except (OSError, CorruptEntryError) as exc:
            raise SpoolWriteError(f"cannot read spool entry {entry.id}: {exc}") from exc
        attempts = header.attempts + 1
        if attempts >= self._max_attempts:
            self._quarantine(entry, header, attempts=attempts, stage=stage, error=error)
            return True
        updated = Header(
            id=header.id,
            envelope=header.envelope,
            size=header.size,
            attempts=attempts,
            last_stage=stage,
            last_error=error[:_MAX_ERROR_CHARS],
        )
        try:
            # Rewrite in place first (tmp + fsync + rename over our own claimed file), THEN move:
            # a crash in between leaves one complete file in claimed/, which recover() returns.
            self._rewrite(entry.path, updated)
            os.rename(entry.path, self.incoming_dir / filename(entry.id))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SpoolWriteError(f"cannot requeue spool entry {entry.id}: {exc}") from exc
        self._forget_candidates()
        return False

    def quarantine(self, entry: Entry, *, stage: str, error: str) -> None:
        """Quarantine now, without further attempts (e.g. a message no retry can fix)."""
        try:
            header = read_header_at(entry.path)
        except FileNotFoundError:
            return  # moved back by recover(): it will be claimed and judged again
        except (OSError, CorruptEntryError) as exc:
            raise SpoolWriteError(f"cannot read spool entry {entry.id}: {exc}") from exc
        self._quarantine(entry, header, attempts=header.attempts, stage=stage, error=error)

    def recover(self) -> int:
        """At daemon start: return every claimed entry to incoming/, delete tmp/ leftovers.

        tmp/ files were never renamed into incoming/, so nobody was ever told they were safe:
        deleting them loses nothing that was acknowledged. Returns the number of entries moved.
        """
        moved = 0
        try:
            for name in entry_names(self.claimed_dir):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.claimed_dir / name, self.incoming_dir / name)
                    moved += 1
            for leftover in os.listdir(self.tmp_dir):
                with contextlib.suppress(FileNotFoundError):
                    (self.tmp_dir / leftover).unlink()
        except OSError as exc:
            raise SpoolWriteError(f"cannot recover spool {self.root}: {exc}") from exc
        self._forget_candidates()
        self._remeasure_bytes()
        return moved

    # ---------------------------------------------------------------------------- inspection

    def pending(self) -> list[Entry]:
        """Entries in incoming/ and claimed/, oldest first."""
        entries = [
            entry
            for directory in (self.incoming_dir, self.claimed_dir)
            for entry in self._entries_in(directory)
        ]
        entries.sort(key=lambda entry: entry.id)
        return entries

    def get(self, entry_id: str) -> Entry | None:
        """The entry with this id, wherever it is (incoming, claimed or quarantine), or None."""
        if ID_RE.fullmatch(entry_id) is None:
            return None  # also keeps admin input like "../x" out of the path
        name = filename(entry_id)
        # Two passes: the entry may move between directories while we look.
        for _ in range(2):
            for directory in (self.incoming_dir, self.claimed_dir, self.quarantine_dir):
                path = directory / name
                try:
                    return read_header_at(path).entry(path)
                except (FileNotFoundError, CorruptEntryError):
                    continue
        return None

    def depth(self) -> int:
        """Number of entries in incoming/ and claimed/."""
        return len(entry_names(self.incoming_dir)) + len(entry_names(self.claimed_dir))

    def quarantined(self) -> list[QuarantineRecord]:
        """Every quarantined entry with its stage, error and time, oldest id first."""
        records = [
            record
            for name in sorted(entry_names(self.quarantine_dir))
            if (record := self._quarantine_record(self.quarantine_dir / name)) is not None
        ]
        return records

    def quarantine_record(self, entry_id: str) -> QuarantineRecord | None:
        """One quarantined entry (for ``quarantine show``), or None."""
        if ID_RE.fullmatch(entry_id) is None:
            return None
        return self._quarantine_record(self.quarantine_dir / filename(entry_id))

    def quarantine_count(self) -> int:
        return len(entry_names(self.quarantine_dir))

    def replay(self, entry_id: str) -> bool:
        """Move a quarantined entry back to incoming/ with attempts reset to 0.

        Returns False if there is no such quarantined entry.
        """
        if ID_RE.fullmatch(entry_id) is None:
            return False
        path = self.quarantine_dir / filename(entry_id)
        try:
            header = read_header_at(path)
        except FileNotFoundError:
            return False
        except (OSError, CorruptEntryError) as exc:
            raise SpoolError(f"cannot replay spool entry {entry_id}: {exc}") from exc
        fresh = Header(id=header.id, envelope=header.envelope, size=header.size)
        try:
            self._rewrite(path, fresh)  # same two-step as fail(): never two copies, never none
            file_bytes = path.stat().st_size
            os.rename(path, self.incoming_dir / filename(entry_id))
        except FileNotFoundError:
            return False  # another admin replayed it at the same moment
        except OSError as exc:
            raise SpoolWriteError(f"cannot replay spool entry {entry_id}: {exc}") from exc
        self._account(file_bytes)
        self._forget_candidates()
        return True

    # ---------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Finish the writes already submitted, then stop the writer thread.

        Later enqueue_async calls raise SpoolWriteError. Blocks until the writer has drained, so
        call it from a thread (or after the event loop stopped), not from a coroutine.
        """
        with self._submit_lock:
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._jobs.put(_STOP)
        if writer is not None:
            writer.join()
        if self._fsync_pool is not None:
            self._fsync_pool.shutdown(wait=True)

    # ---------------------------------------------------------------------------- internals

    def _prepare(
        self, entry_id: str, raw: bytes, envelope: Envelope, *, sync: bool = True
    ) -> _Prepared:
        """Write the entry to tmp/ (and fsync it unless ``sync`` is False: the caller will).

        Raises SpoolError; on failure leaves nothing behind.
        """
        try:
            header = Header(id=entry_id, envelope=envelope, size=len(raw)).encode()
        except Exception as exc:  # a bad envelope is still only a "451, try later" for the sender
            raise SpoolWriteError(f"cannot encode the envelope: {exc}") from exc
        file_bytes = len(header) + len(raw)
        self._reserve(file_bytes)
        tmp_path = self.tmp_dir / f"{entry_id}.{os.getpid()}.tmp"
        try:
            if self._write_fault is not None:
                self._write_fault()
            self._write_file(tmp_path, header, raw, sync=sync)
        except BaseException as exc:
            self._account(-file_bytes)
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            if isinstance(exc, SpoolError) or not isinstance(exc, Exception):
                raise
            raise _as_spool_error(exc) from exc
        return _Prepared(entry_id, tmp_path, file_bytes)

    def _write_file(
        self, path: Path, header: bytes, raw: bytes | IO[bytes], *, sync: bool = True
    ) -> None:
        # O_EXCL: a tmp name is never reused, so an existing file means something is badly wrong.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            out.write(header)
            if isinstance(raw, bytes):
                out.write(raw)
            else:
                shutil.copyfileobj(raw, out)
            out.flush()
            crash_point("mid-spool-write")  # written, not yet fsynced nor renamed: not visible
            if self._fsync and sync:
                # The contents must be on disk BEFORE the rename makes the name visible;
                # otherwise a crash can leave a visible, empty or truncated entry.
                os.fsync(out.fileno())
                self._count_file_fsync()

    def _sync_tmp(self, prepared: _Prepared) -> None:
        """fsync a tmp file written with sync=False (fsync through any fd flushes the inode)."""
        fd = os.open(prepared.tmp_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._count_file_fsync()

    def _count_file_fsync(self) -> None:
        with self._size_lock:
            self.file_fsyncs += 1

    def _publish(self, batch: list[_Prepared]) -> list[str | SpoolError]:
        """Rename fsynced tmp files into incoming/, then fsync incoming/ once for all of them."""
        outcomes: list[str | SpoolError] = []
        for prepared in batch:
            try:
                os.rename(prepared.tmp_path, self.incoming_dir / filename(prepared.entry_id))
                outcomes.append(prepared.entry_id)
            except OSError as exc:
                self._drop_tmp(prepared)
                outcomes.append(_as_spool_error(exc))
        if self._fsync and any(isinstance(outcome, str) for outcome in outcomes):
            try:
                # The rename is only durable once the directory is: this fsync is what makes it
                # safe to acknowledge. One fsync covers every rename in the group.
                fsync_dir(self.incoming_dir)
                with self._size_lock:
                    self.dir_fsyncs += 1
            except OSError as exc:
                # The files stay in incoming/ and will probably be processed; the senders are told
                # to retry, and the duplicate that may follow is absorbed by the dedup key.
                error = _as_spool_error(exc)
                outcomes = [error if isinstance(outcome, str) else outcome for outcome in outcomes]
        return outcomes

    def _submit(self, job: _Job) -> None:
        with self._submit_lock:
            if self._closed:
                raise SpoolWriteError("spool is closed")
            if self._fsync and self._fsync_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._fsync_pool = ThreadPoolExecutor(
                    max_workers=_FSYNC_THREADS, thread_name_prefix="spool-fsync"
                )
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._writer_main, name="spool-writer", daemon=True
                )
                self._writer.start()
            self._jobs.put(job)

    def _writer_main(self) -> None:
        in_flight: list[_Job] = []
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                in_flight = [first]
                stop = False
                # Take everything that queued up while we were busy: one group, one dir fsync.
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is _STOP:
                        stop = True
                        break
                    in_flight.append(job)
                self._write_group(in_flight)
                in_flight = []
                if stop:
                    return
        finally:
            # However this thread ends, no caller may be left waiting forever. Futures already
            # resolved ignore the second settle.
            with self._submit_lock:
                self._writer = None
                leftovers: list[_Job] = []
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        leftovers.append(job)
            dead = SpoolWriteError("spool writer stopped")
            for job in in_flight + leftovers:
                if isinstance(job.raw, SpoolStream):
                    job.raw.abort()  # its tmp file and reserved bytes, never acknowledged
                job.settle(dead)

    def _write_group(self, jobs: list[_Job]) -> None:
        written: list[tuple[_Job, _Prepared]] = []
        for job in jobs:
            try:
                if isinstance(job.raw, SpoolStream):
                    item = job.raw.finish(job.envelope)
                else:
                    item = self._prepare(job.entry_id, job.raw, job.envelope, sync=False)
                written.append((job, item))
            except SpoolError as exc:
                job.settle(exc)
        prepared = self._sync_group(written) if self._fsync else written
        try:
            outcomes = self._publish([item for _, item in prepared])
        except Exception as exc:
            outcomes = [_as_spool_error(exc)] * len(prepared)
        _settle_all([(job, outcome)
                     for (job, _), outcome in zip(prepared, outcomes, strict=True)])

    def _sync_group(self, written: list[tuple[_Job, _Prepared]]) -> list[tuple[_Job, _Prepared]]:
        """fsync a group's files (`_sync_files`); return those that made it to disk, having
        told the senders of the others."""
        errors = self._sync_files([item for _, item in written])
        synced: list[tuple[_Job, _Prepared]] = []
        for (job, item), error in zip(written, errors, strict=True):
            if error is None:
                synced.append((job, item))
            else:
                job.settle(error)
        return synced

    def _sync_files(self, items: list[_Prepared]) -> list[SpoolError | None]:
        """fsync every file of a group, several at once: each file's error or None, in order;
        a file that failed is dropped (`_drop_tmp`).

        Concurrent fsyncs are merged by the filesystem journal (ext4/XFS commit them together),
        so a group of N files costs far less than N sequential fsyncs. Each file is still fsynced
        before its rename, as the durability ordering requires. The files are dealt into at
        most _FSYNC_THREADS lanes; this thread fsyncs the first lane itself while the pool
        fsyncs the others, one task a lane rather than one a file: a future a file cost this
        thread (which holds the GIL the webhooks' event loop needs) about as much as writing
        the file (issue 20 outcome 2). Without the pool (`enqueue_many`, no writer thread
        yet) they are fsynced in turn: the first commits the journal with the whole group.
        """
        if len(items) <= 1 or self._fsync_pool is None:
            errors = [self._try_sync(item) for item in items]
        else:
            lanes = min(_FSYNC_THREADS, len(items))
            others = [self._fsync_pool.submit(self._try_sync_all, items[lane::lanes])
                      for lane in range(1, lanes)]
            errors = [None] * len(items)
            errors[0::lanes] = self._try_sync_all(items[0::lanes])
            for lane, future in enumerate(others, start=1):
                errors[lane::lanes] = future.result()
        for item, error in zip(items, errors, strict=True):
            if error is not None:
                self._drop_tmp(item)
        return errors

    def _drop_tmp(self, prepared: _Prepared) -> None:
        """Forget a tmp file that will never be published: its bytes and the file."""
        self._account(-prepared.file_bytes)
        with contextlib.suppress(OSError):
            prepared.tmp_path.unlink()

    def _try_sync_all(self, lane: list[_Prepared]) -> list[SpoolError | None]:
        return [self._try_sync(prepared) for prepared in lane]

    def _try_sync(self, prepared: _Prepared) -> SpoolError | None:
        try:
            self._sync_tmp(prepared)
        except OSError as exc:
            return _as_spool_error(exc)
        return None

    def _rewrite(self, path: Path, header: Header) -> None:
        """Replace the header of the entry at ``path`` (which the caller owns): tmp, fsync, rename.

        Raises FileNotFoundError if the entry is gone.
        """
        tmp_path = self.tmp_dir / f"{header.id}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            with open(path, "rb") as source:
                try:
                    read_header(source)
                except CorruptEntryError as exc:
                    raise OSError(errno.EIO, f"unreadable spool entry: {exc}") from exc
                self._write_file(tmp_path, header.encode(), source)
            os.rename(tmp_path, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            raise

    def _quarantine(
        self, entry: Entry, header: Header, *, attempts: int, stage: str, error: str
    ) -> None:
        record = Header(
            id=header.id,
            envelope=header.envelope,
            size=header.size,
            attempts=attempts,
            last_stage=stage,
            last_error=error[:_MAX_ERROR_CHARS],
            quarantined_at=business_clock.now(),
        )
        try:
            # Stage, error and time are written into the file BEFORE it moves: a quarantined
            # entry always explains itself.
            self._rewrite(entry.path, record)
            file_bytes = entry.path.stat().st_size
            os.rename(entry.path, self.quarantine_dir / filename(entry.id))
        except FileNotFoundError:
            return  # moved back by recover(): it will be retried and fail again
        except OSError as exc:
            raise SpoolWriteError(f"cannot quarantine spool entry {entry.id}: {exc}") from exc
        self._account(-file_bytes)

    def _quarantine_record(self, path: Path) -> QuarantineRecord | None:
        try:
            header = read_header_at(path)
        except FileNotFoundError:
            return None
        except (OSError, CorruptEntryError) as exc:
            # Parked by claim() because it could not be read: show it rather than hide it.
            try:
                status = path.stat()
            except FileNotFoundError:
                return None
            mtime = datetime.fromtimestamp(status.st_mtime, UTC)
            return QuarantineRecord(
                id=path.name.removesuffix(SUFFIX),
                envelope=Envelope(channel="unknown", received_at=mtime),
                attempts=0,
                stage="spool",
                error=f"unreadable spool entry: {exc}",
                quarantined_at=mtime,
                size=status.st_size,
            )
        return QuarantineRecord(
            id=header.id,
            envelope=header.envelope,
            attempts=header.attempts,
            stage=header.last_stage or "unknown",
            error=header.last_error or "",
            quarantined_at=header.quarantined_at or header.envelope.received_at,
            size=header.size,
        )

    def _entries_in(self, directory: Path) -> Iterator[Entry]:
        for name in entry_names(directory):
            path = directory / name
            try:
                yield read_header_at(path).entry(path)
            except (FileNotFoundError, CorruptEntryError):
                continue  # moved meanwhile; or unreadable, which claim() will park

    def _next_candidate(self) -> str | None:
        with self._claim_lock:
            if not self._candidates:
                self._candidates.extend(sorted(entry_names(self.incoming_dir)))
            return self._candidates.popleft() if self._candidates else None

    def _forget_candidates(self) -> None:
        with self._claim_lock:
            self._candidates.clear()

    # Space accounting ------------------------------------------------------------------------

    def _reserve(self, file_bytes: int) -> None:
        """Refuse (SpoolFullError) when above the high-water mark or low on disk; else count it."""
        now = time.monotonic()
        if (
            self._high_water_bytes is not None
            and now - self._bytes_measured_at > _RESCAN_INTERVAL_S
        ):
            self._remeasure_bytes()
        with self._size_lock:
            if (
                self._high_water_bytes is not None
                and self._bytes + file_bytes > self._high_water_bytes
            ):
                raise SpoolFullError(
                    f"spool above its high-water mark ({self._bytes} of "
                    f"{self._high_water_bytes} bytes in use)"
                )
            if self._min_free_bytes > 0:
                if now - self._free_measured_at > _STATVFS_INTERVAL_S:
                    try:
                        stats = os.statvfs(self.root)
                    except OSError as exc:
                        raise SpoolWriteError(f"cannot stat spool filesystem: {exc}") from exc
                    self._free_bytes = stats.f_bavail * stats.f_frsize
                    self._free_measured_at = now
                if self._free_bytes - file_bytes < self._min_free_bytes:
                    raise SpoolFullError(
                        f"spool filesystem has {self._free_bytes} bytes free, "
                        f"below the {self._min_free_bytes}-byte minimum"
                    )
                self._free_bytes -= file_bytes
            self._bytes += file_bytes

    def _account(self, delta: int) -> None:
        with self._size_lock:
            self._bytes = max(0, self._bytes + delta)
            if delta < 0:
                self._free_bytes -= delta

    def _remeasure_bytes(self) -> None:
        total = 0
        for directory in (self.incoming_dir, self.claimed_dir):
            for name in entry_names(directory):
                with contextlib.suppress(FileNotFoundError):
                    total += (directory / name).stat().st_size
        with self._size_lock:
            self._bytes = total
            self._bytes_measured_at = time.monotonic()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _as_spool_error(exc: BaseException) -> SpoolError:
    if isinstance(exc, SpoolError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return SpoolFullError(f"spool is full: {exc}")
    return SpoolWriteError(f"cannot write to the spool: {exc}")
