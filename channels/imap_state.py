"""An IMAP mailbox's own bookkeeping: its counters, its cursor and its failed fetches.

What this module owns
---------------------
* `MailboxStats`: what `gateway status` and the metrics show of one mailbox.
* `Cursor` and `CursorKeeper`: UIDVALIDITY and the last UID taken, in memory and mirrored to
  `channel_state` (the channel's one narrow door into storage) whenever the database lets us.
* `FailedFetches`: failed fetches by UID towards `max_attempts`, kept across restarts.

What it must never do
---------------------
Talk IMAP (that is channels/imap.py), or stop intake because the database is down: every value
lives on in memory and is written when the database is back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Final

from gateway.storage.channel_state import ChannelStateStore

log = logging.getLogger("channels.imap")

@dataclass
class MailboxStats:
    """What `gateway status` shows for `imap:<name>`; written by the poller thread only."""

    accepted: int = 0  # messages spooled
    acknowledged: int = 0  # messages moved/flagged after spooling
    quarantined: int = 0  # messages moved to the quarantine folder
    fetch_failures: int = 0  # per-message fetch failures (counted towards quarantine)
    temp_failures: int = 0  # attempts the spool refused: messages left in place, retried later
    reconnects: int = 0  # sessions ended by an error and retried after a backoff
    rescans: int = 0  # UIDVALIDITY changes
    connected: bool = False
    idle: bool = False  # in an IDLE-capable session
    uidvalidity: int | None = None
    last_uid: int = 0
    cursor_pending: bool = False  # cursor not yet written to the database (it is down)
    last_fetch_at: float | None = None  # epoch seconds of the last successful drain (metrics)
    lock_held: bool = False  # this instance holds the mailbox's cluster lock (PostgreSQL)
    # The error the mailbox is in now, and since when (ISO 8601, UTC); None once a whole look at
    # the folder has succeeded after it (issue 18 item 9: a recovered mailbox showed its last
    # ConnectionRefusedError as if it were still failing).
    last_error: str | None = None
    last_error_at: str | None = None
    # The last error a successful fetch put behind us, when it happened and when it was over.
    past_error: str | None = None
    past_error_at: str | None = None
    recovered_at: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def failed(self, error: str, at: datetime) -> None:
        """The mailbox is in error now (a failed connection, fetch or spool write)."""
        self.last_error = error
        self.last_error_at = _iso(at)

    def fetched(self, at: datetime) -> None:
        """A whole look at the folder succeeded: an error before it is past, kept as such."""
        if self.last_error is not None:
            self.past_error, self.past_error_at = self.last_error, self.last_error_at
            self.recovered_at = _iso(at)
            self.last_error = self.last_error_at = None


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Cursor:
    uidvalidity: int | None = None
    last_uid: int = 0

    def encode(self) -> str:
        return f"{self.uidvalidity or 0}:{self.last_uid}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        validity, _, last = text.partition(":")
        return cls(int(validity) or None, int(last))


class CursorKeeper:
    """The cursor in memory, mirrored to channel_state when the database lets us."""

    KEY: Final = "cursor"

    def __init__(self, store: ChannelStateStore | None, channel: str, stats: MailboxStats) -> None:
        self.store = store
        self.channel = channel
        self.stats = stats
        self.cursor = Cursor()
        self.loaded = store is None
        self.dirty = False

    def load(self) -> None:
        if self.loaded or self.store is None:
            return
        try:
            text = self.store.get(self.channel, self.KEY)
        except Exception as exc:  # database down: a rescan is harmless, intake must go on
            log.warning("%s: cannot read the cursor (%s); rescanning instead", self.channel, exc)
            return
        self.loaded = True
        if text:
            try:
                self.cursor = Cursor.decode(text)
            except ValueError:
                log.warning("%s: unreadable cursor %r; rescanning", self.channel, text)

    def update(self, cursor: Cursor) -> None:
        if cursor != self.cursor:
            self.cursor = cursor
            self.dirty = True
        self.stats.uidvalidity = cursor.uidvalidity
        self.stats.last_uid = cursor.last_uid

    def flush(self) -> None:
        self.stats.cursor_pending = self.dirty and self.store is not None
        if not self.dirty or self.store is None:
            return
        try:
            self.store.set(self.channel, self.KEY, self.cursor.encode())
        except Exception as exc:
            log.debug("%s: cursor not written (%s); keeping it in memory", self.channel, exc)
            return
        self.dirty = False
        self.stats.cursor_pending = False


class FailedFetches:
    """Failed fetches by UID, towards ``max_attempts``: in memory, mirrored to channel_state.

    Kept in the database so that a restart (or a crash-looping gateway) does not start every
    poison message's count at zero again. One key per mailbox, ``attempts``, holding
    ``{"uidvalidity": V, "uids": {"<uid>": n}}``: read once per session, written only when a
    fetch fails or a message that had failed leaves the folder (moved, flagged, quarantined,
    expunged), so the common path costs no database round trip. Counts belong to one
    UIDVALIDITY (RFC 3501 2.3.1.1) and are dropped when it changes. The database being down is
    never a reason to stop: the counts live on in memory and are written when it is back.
    """

    KEY: Final = "attempts"

    def __init__(self, store: ChannelStateStore | None, channel: str) -> None:
        self.store = store
        self.channel = channel
        self.uidvalidity: int | None = None
        self.counts: dict[int, int] = {}
        self.loaded = store is None
        self.dirty = False
        self._warned = False  # the database is down: say so once, not on every retry

    def use(self, uidvalidity: int) -> None:
        """At each SELECT: counts kept for another UIDVALIDITY mean nothing any more."""
        if uidvalidity != self.uidvalidity:
            self.dirty = self.dirty or bool(self.counts)
            self.counts.clear()
            self.uidvalidity = uidvalidity
        self._load()

    def failed(self, uid: int) -> int:
        """Count one more failure of ``uid``; return its total (this session's and before)."""
        self._load()
        self.counts[uid] = self.counts.get(uid, 0) + 1
        self.dirty = True
        self.flush()  # now: a crash right after this failure must still have counted it
        return self.counts[uid]

    def forget(self, uids: list[int]) -> None:
        """The messages left the folder: their counts go (written only if there were any)."""
        for uid in uids:
            if self.counts.pop(uid, None) is not None:
                self.dirty = True
        if self.dirty:
            self.flush()

    def flush(self) -> None:
        if not self.dirty or self.store is None:
            return
        self._load()
        if not self.loaded:
            return  # writing now would erase the counts we have not been able to read yet
        value = {
            "uidvalidity": self.uidvalidity,
            "uids": {str(u): n for u, n in self.counts.items()},
        }
        try:
            self.store.set(self.channel, self.KEY, json.dumps(value, sort_keys=True))
        except Exception as exc:
            log.debug(
                "%s: fetch attempts not written (%s); keeping them in memory", self.channel, exc
            )
            return
        self.dirty = False

    def _load(self) -> None:
        if self.loaded or self.store is None or self.uidvalidity is None:
            return
        try:
            text = self.store.get(self.channel, self.KEY)
        except Exception as exc:  # database down: count in memory, read it when it is back
            if not self._warned:
                log.warning(
                    "%s: cannot read fetch attempts (%s); counting in memory", self.channel, exc
                )
            self._warned = True
            return
        self.loaded = True
        try:
            data = json.loads(text) if text else {}
            stored = {int(u): int(n) for u, n in data.get("uids", {}).items()}
            validity = data.get("uidvalidity")
        except (ValueError, TypeError, AttributeError):
            log.warning("%s: unreadable fetch attempts %r; starting from zero", self.channel, text)
            stored, validity = {}, None
        if validity != self.uidvalidity:
            self.dirty = self.dirty or bool(stored)  # stale: overwrite it
            return
        for uid, n in stored.items():  # counted in memory while the database was down, too
            self.counts[uid] = max(n, self.counts.get(uid, 0))
