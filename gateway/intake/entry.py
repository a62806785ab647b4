"""One spool entry on disk: the values a channel and a worker see, and the file format.

What this module owns
---------------------
* The values: :class:`Envelope` (what the channel knew besides the bytes), :class:`Entry` (a
  spooled message as a worker sees it) and :class:`QuarantineRecord`.
* The file format of ``<id>.msg`` (gateway/intake/spool.py's docstring describes it): the one-line
  ASCII JSON :class:`Header`, how ids are made (arrival order across processes) and named, and the
  directory fsync a rename needs to be durable.

What it must never do
---------------------
Move, claim or delete files (that is :class:`gateway.intake.spool.Spool`), touch the database,
or read the business clock: ids use the real wall clock so they sort by real arrival.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

from gateway import clock as business_clock

FORMAT_VERSION: Final = 1
SUFFIX: Final = ".msg"
ID_RE: Final = re.compile(r"\d{20}-[0-9a-f]{12}")
NAME_RE: Final = re.compile(r"(\d{20}-[0-9a-f]{12})\.msg")
# A header is a few hundred bytes; the cap only stops a corrupt file from being read whole.
MAX_HEADER_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class Envelope:
    """What the channel knew about a message besides its bytes."""

    channel: str  # "smtp" | "lmtp" | "pipe" | "imap" | "twilio-sms" | ...
    received_at: datetime  # timezone-aware; normalised to UTC
    mail_from: str | None = None  # SMTP MAIL FROM ("" for the null sender <>)
    recipients: tuple[str, ...] = ()
    peer: str | None = None  # remote address, mailbox name, ...
    channel_key: str | None = None  # channel-provided dedup key, e.g. "twilio:sms:SM123"
    meta: tuple[tuple[str, str], ...] = ()  # extra channel facts, e.g. (("imap_uid", "42"),)

    def __post_init__(self) -> None:
        if self.received_at.utcoffset() is None:
            raise ValueError("Envelope.received_at must be timezone-aware")
        if self.received_at.tzinfo is not UTC:
            object.__setattr__(self, "received_at", self.received_at.astimezone(UTC))

    def to_json(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "received_at": self.received_at.isoformat(),
            "mail_from": self.mail_from,
            "recipients": list(self.recipients),
            "peer": self.peer,
            "channel_key": self.channel_key,
            "meta": [[key, value] for key, value in self.meta],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Envelope:
        """Inverse of :meth:`to_json`; raises ValueError naming the key that is wrong."""
        received_at = require_str(data, "received_at")
        try:
            when = datetime.fromisoformat(received_at)
        except ValueError as exc:
            raise ValueError(f"envelope key 'received_at': {exc}") from exc
        recipients = data.get("recipients", [])
        if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
            raise ValueError("envelope key 'recipients' must be a list of strings")
        meta_raw = data.get("meta", [])
        meta: list[tuple[str, str]] = []
        if not isinstance(meta_raw, list):
            raise ValueError("envelope key 'meta' must be a list of [key, value] pairs")
        for pair in meta_raw:
            if not (
                isinstance(pair, list | tuple)
                and len(pair) == 2
                and isinstance(pair[0], str)
                and isinstance(pair[1], str)
            ):
                raise ValueError("envelope key 'meta' must be a list of [key, value] pairs")
            meta.append((pair[0], pair[1]))
        return cls(
            channel=require_str(data, "channel"),
            received_at=when,
            mail_from=optional_str(data, "mail_from"),
            recipients=tuple(recipients),
            peer=optional_str(data, "peer"),
            channel_key=optional_str(data, "channel_key"),
            meta=tuple(meta),
        )


@dataclass(frozen=True)
class Entry:
    """A spooled message as a worker sees it. ``path`` is where the file was when read."""

    id: str  # sortable by arrival: f"{time_ns:020d}-{random hex}"
    envelope: Envelope
    attempts: int  # failed processing attempts so far
    size: int  # raw message bytes
    path: Path  # current file
    last_stage: str | None = None  # stage of the latest failure, if any
    last_error: str | None = None  # error of the latest failure, if any


@dataclass(frozen=True)
class QuarantineRecord:
    """What ``quarantine list/show`` prints."""

    id: str
    envelope: Envelope
    attempts: int
    stage: str
    error: str
    quarantined_at: datetime
    size: int


@dataclass(frozen=True)
class Header:
    id: str
    envelope: Envelope
    size: int
    attempts: int = 0
    last_stage: str | None = None
    last_error: str | None = None
    quarantined_at: datetime | None = None

    def encode(self) -> bytes:
        doc: dict[str, object] = {
            "v": FORMAT_VERSION,
            "id": self.id,
            "envelope": self.envelope.to_json(),
            "size": self.size,
            "attempts": self.attempts,
            "last_stage": self.last_stage,
            "last_error": self.last_error,
            "quarantined_at": (
                self.quarantined_at.isoformat() if self.quarantined_at is not None else None
            ),
        }
        # ensure_ascii escapes every control character, so the header is exactly one line.
        text = json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
        return text.encode("ascii") + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Header:
        doc = json.loads(line)
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
            raise ValueError("not a version-1 spool header")
        envelope = doc.get("envelope")
        if not isinstance(envelope, dict):
            raise ValueError("header key 'envelope' must be an object")
        size, attempts = doc.get("size"), doc.get("attempts")
        if not isinstance(size, int) or not isinstance(attempts, int):
            raise ValueError("header keys 'size' and 'attempts' must be integers")
        quarantined_at = optional_str(doc, "quarantined_at")
        return cls(
            id=require_str(doc, "id"),
            envelope=Envelope.from_json(envelope),
            size=size,
            attempts=attempts,
            last_stage=optional_str(doc, "last_stage"),
            last_error=optional_str(doc, "last_error"),
            quarantined_at=(
                datetime.fromisoformat(quarantined_at) if quarantined_at is not None else None
            ),
        )

    def entry(self, path: Path) -> Entry:
        return Entry(
            id=self.id,
            envelope=self.envelope,
            attempts=self.attempts,
            size=self.size,
            path=path,
            last_stage=self.last_stage,
            last_error=self.last_error,
        )


class CorruptEntryError(Exception):
    """A file in the spool whose header cannot be read (disk damage, a stray admin copy)."""


def read_header(stream: IO[bytes]) -> Header:
    line = stream.readline(MAX_HEADER_BYTES + 1)
    if not line.endswith(b"\n"):
        raise CorruptEntryError("no header line")
    try:
        return Header.decode(line)
    except (ValueError, TypeError) as exc:
        raise CorruptEntryError(f"bad header: {exc}") from exc


def read_header_at(path: Path) -> Header:
    with open(path, "rb") as stream:
        return read_header(stream)


def new_id() -> str:
    # Wall-clock nanoseconds make ids sort by arrival across processes; the suffix keeps two
    # arrivals in the same nanosecond (or on two hosts) apart: a 48-bit counter that starts at
    # a random value in each process (and again in a forked child), so no two ids of one
    # process are ever equal and two processes' ids collide only with the same nanosecond and
    # suffix. One os.urandom a process, not one an id: it releases the GIL, and under load
    # the event loop then waited behind the spool's writer thread to get it back (160 µs a
    # webhook, issue 20 outcome 2). Not `secrets` or `random`: importing them cost
    # `gateway ingest` ~10 ms.
    return f"{business_clock.wall_nanoseconds():020d}-{next(_suffixes) & _SUFFIX_MASK:012x}"


_SUFFIX_MASK = (1 << 48) - 1


def _new_suffixes() -> None:
    global _suffixes
    _suffixes = itertools.count(int.from_bytes(os.urandom(6), "big"))


_suffixes: Iterator[int]
_new_suffixes()
os.register_at_fork(after_in_child=_new_suffixes)


def filename(entry_id: str) -> str:
    return entry_id + SUFFIX


def entry_names(directory: Path) -> list[str]:
    """Names of entry files in ``directory`` (anything else, e.g. an editor's backup, is ignored).

    A missing or unreadable directory counts as empty: inspection must not crash the caller.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [name for name in names if NAME_RE.fullmatch(name)]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def require_str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"key {key!r} must be a string")
    return value


def optional_str(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"key {key!r} must be a string or null")
    return value
