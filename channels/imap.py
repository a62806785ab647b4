"""The IMAP channel: take mail out of an existing mailbox, spool it, only then move or flag it.

Owns the IMAP contract for each `[[imap]]` mailbox (one thread each, so one broken mailbox never
stalls another or any other channel):

* Messages are fetched by UID with ``BODY.PEEK[]`` (RFC 3501 6.4.5), so fetching never sets
  \\Seen by accident, and the exact raw bytes are spooled: the spine's dedup key then makes a
  message seen twice (crash between spool and move, the same mail in two mailboxes, or by SMTP
  and IMAP) one ticket.
* The server is told (MOVE to ``processed_folder`` or STORE +FLAGS \\Seen) ONLY AFTER the
  message's own spool write returned (DESIGN promise 1); a fetch group is spooled together
  (``enqueue_async``: one group commit). The competitors' bugs (django-helpdesk #209,
  Zammad #1662) come from doing this the other way round.
* A spool that cannot be written is a temporary failure: the message stays unseen and in place,
  the poller backs off and retries; it is never quarantined for that.
* A message that cannot be fetched ``max_attempts`` times, or is over ``limits.max_message_bytes``,
  is moved to ``quarantine_folder`` on the server (log line + ``stats.quarantined``): one poison
  message never blocks the mailbox (DESIGN promise 3).
* Memory stays bounded whatever the backlog: UIDs are searched, sizes fetched first
  (RFC822.SIZE), bodies fetched ``batch_size`` UIDs (and at most ``_MAX_FETCH_BYTES``) at a time.
* The cursor (UIDVALIDITY, last UID) and the failed-fetch counts are bookkeeping only, kept in
  memory and written to ``channel_state`` when the database is reachable. With the database
  down intake goes on; a lost or stale cursor only costs a rescan, which the dedup key makes
  harmless, and lost counts only a few more fetches before quarantine. A UIDVALIDITY
  change (RFC 3501 2.3.1.1: old UIDs mean nothing) triggers that rescan.
* IDLE (RFC 2177) when the server offers it, re-issued every ``IDLE_RENEW_SECONDS`` (well before
  the RFC's 29 minutes: NATs and proxies drop quiet connections sooner); polling otherwise.
  Mail that arrives between our last SEARCH and IDLE is announced with the server's answer to
  IDLE itself, or in a SEARCH's; both are looked for, never left to wait for the renewal.
* Any connection or server error: disconnect, capped exponential backoff with jitter, reconnect.
* One poller per mailbox cluster-wide: with several instances on one PostgreSQL, a poller serves
  its mailbox only while it holds the advisory lock ``imap:<name>`` (ClusterLock, on its own
  connection); the others retry every ``LOCK_RETRY_SECONDS`` and take over when the holder's
  connection closes. A database that cannot be asked never stops intake: the poller then polls
  unverified (two pollers at once are harmless, only wasteful: the dedup key). SQLite: no lock.
* ``tls = "starttls"`` MUST succeed: if the server does not offer STARTTLS we refuse to log in
  (the password never crosses the network in clear text); "plain" is for localhost only.

Never parses, classifies or writes tickets; its only database use is the cursor and the fetch
attempts, through
:class:`gateway.storage.channel_state.ChannelStateStore`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from channels.imap_state import Cursor, CursorKeeper, FailedFetches, MailboxStats
from gateway import clock as business_clock
from gateway.config.gateway_schema import ImapMailbox
from gateway.config.loader import LOCAL_HOSTS, Settings, secret
from gateway.intake.faults import crash_point
from gateway.intake.spool import Envelope, Spool, SpoolError
from gateway.storage.channel_state import (
    ChannelStateStore,
    ClusterLock,
    needs_cluster_lock,
)

__all__ = [
    "IDLE_RENEW_SECONDS",
    "MailboxChanges",
    "MailboxPoller",
    "MailboxStats",
    "PollerThread",
    "StartTlsRequiredError",
    "mailbox_changes",
    "mailbox_password",
    "start_poller",
]

log = logging.getLogger(__name__)

# RFC 2177: clients SHOULD re-issue IDLE at least every 29 minutes; middleboxes are less patient.
IDLE_RENEW_SECONDS: Final = 300.0
# Cap on the bytes of one FETCH, besides batch_size UIDs: memory stays bounded with big mail.
_MAX_FETCH_BYTES: Final = 64 * 1024 * 1024
# Socket timeout for every command except IDLE (which polls the socket itself).
_SOCKET_TIMEOUT_S: Final = 60.0
# While idling, how often we look at the stop event and at a cursor waiting for the database.
_IDLE_SLICE_S: Final = 1.0
_SEEN: Final = b"\\Seen"
# Another instance holds the mailbox: how often we ask again (and so the takeover bound).
LOCK_RETRY_SECONDS: Final = 3.0
_DELETED: Final = b"\\Deleted"

# A dropped connection, a TLS failure or imaplib's "abort": reconnect, never blame a message.
# (imaplib.IMAP4.abort subclasses IMAP4.error, so it must be tested first.)
_CONNECTION_ERRORS: Final = (OSError, imaplib.IMAP4.abort, EOFError)

Fault = Callable[[str, int], None]


class StartTlsRequiredError(Exception):
    """tls = "starttls" but the server did not offer it: we refuse to log in in plaintext."""


class MailboxError(Exception):
    """The mailbox cannot be served as configured (no password, plaintext refused, ...)."""


class _SpoolUnavailableError(Exception):
    """The spool refused a write: leave the rest where it is and back off."""


def mailbox_password(name: str) -> str | None:
    """$GATEWAY_IMAP_PASSWORD_<NAME> (upper case, '-' as '_'), else credential `imap-<name>`."""
    return secret(f"imap-{name}", "GATEWAY_IMAP_PASSWORD_" + name.upper().replace("-", "_"))


def _mail_arrived_meanwhile(client: Any) -> bool:
    """True if the server announced new mail in the answer to one of our own commands.

    RFC 3501 7.3.1 lets a server report EXISTS in the response to any command. Dovecot does so
    when mail arrives while our SEARCH runs: the SEARCH answers on the old view, and the
    ``* n EXISTS`` lands in imaplib's ``untagged_responses``, where imapclient's IDLE never looks.
    Having told us once, the server says nothing more at IDLE, and the message would wait for the
    next IDLE renewal (tests/imap found it: the wrong-password test's good mailbox, 2 runs in 50).
    Taking (and clearing) those announcements before IDLE closes the gap; a spurious one costs one
    extra SEARCH.
    """
    imap = getattr(client, "_imap", None)
    pending = getattr(imap, "untagged_responses", None)
    if not isinstance(pending, dict):
        return False
    arrived = bool(pending.pop("EXISTS", None))
    arrived |= bool(pending.pop("RECENT", None))
    return arrived


def _input_buffered(client: Any) -> bool:
    """True if the server's bytes already wait in imaplib's read buffer (or TLS's), unread.

    imapclient's ``idle_check`` polls the socket, so it never sees what was read off the socket
    with an earlier line. Dovecot answers IDLE with ``+ idling`` and, at once, whatever changed
    since our last command (``* 1 EXISTS``): one segment, so ``idle()``, reading the
    continuation line, pulls the announcement into the buffer too. Unseen there, the message
    would wait for the IDLE renewal, minutes away (tests/imap found it: mail appended between
    our last SEARCH and IDLE, as under load after a reload's reconnect). Peeking without
    blocking finds it; ``idle_done`` then consumes it and we look again.
    """
    reader = getattr(getattr(client, "_imap", None), "file", None)
    peek = getattr(reader, "peek", None)
    if peek is None:
        return False
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)  # an empty buffer must not wait for the server
    try:
        return bool(peek(1))
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    finally:
        sock.settimeout(timeout)


class MailboxPoller:
    """One mailbox: connect, drain new mail into the spool, idle or poll, reconnect on errors."""

    def __init__(
        self,
        box: ImapMailbox,
        spool: Spool,
        *,
        password: str | None,
        max_message_bytes: int,
        store: ChannelStateStore | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        idle_renew_seconds: float = IDLE_RENEW_SECONDS,
        fault: Fault | None = None,
        lock: ClusterLock | None = None,
        lock_retry_seconds: float = LOCK_RETRY_SECONDS,
    ) -> None:
        self.box = box
        self.lock = lock
        self.lock_retry_seconds = lock_retry_seconds
        self.spool = spool
        self.password = password
        self.max_message_bytes = max_message_bytes
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.idle_renew_seconds = idle_renew_seconds
        # Test seam, like Spool(write_fault=...): called as fault("fetch", uid) before a message
        # is spooled and fault("ack", uid) before the server is told; raising simulates failure.
        self.fault = fault
        self.stats = MailboxStats()
        self.channel = f"imap:{box.name}"
        self.keeper = CursorKeeper(store, self.channel, self.stats)
        self.attempts = FailedFetches(store, self.channel)
        self._done: set[int] = set()  # handled UIDs above the cursor (a failure sits below them)
        self._rescan = False  # flag mode: no trustworthy cursor, look at UNSEEN instead

    @property
    def name(self) -> str:
        return self.box.name

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Serve the mailbox until ``stop`` is set. Never raises."""
        while not stop.is_set():
            active = self._tenure(stop)  # set when stop is set or the mailbox lock is lost
            if active is None:
                break
            failures = 0
            while not active.is_set():
                client: Any = None
                try:
                    client = self._open()
                    failures = 0
                    self._serve(client, active)
                except Exception as exc:
                    failures += 1
                    self.stats.reconnects += 1
                    self._error(exc)
                    delay = self._backoff(failures)
                    log.warning("%s: %s; reconnecting in %.1fs", self.channel, exc, delay)
                    active.wait(delay)
                finally:
                    self._close(client)
            if self.lock is not None:
                self._flush()
                self.lock.release()
                self.stats.lock_held = False
        self._flush()
        log.info("%s: stopped", self.channel)

    # ------------------------------------------------------------------ cluster lock

    def _acquire(self) -> bool | None:
        """True: we hold the lock; False: another instance does; None: cannot ask."""
        assert self.lock is not None
        try:
            held = self.lock.try_acquire()
        except Exception as exc:
            self.stats.lock_held = False
            self._error(exc)
            return None
        self.stats.lock_held = held
        return held

    def _tenure(self, stop: threading.Event) -> threading.Event | None:
        """Wait until this instance may serve the mailbox; None once ``stop`` is set.

        Returns an event set when ``stop`` is set or the lock went to another instance. A
        database that cannot be asked means "serve anyway" (DESIGN promise 1: intake goes on;
        the dedup key makes a second poller harmless), re-asked every second.
        """
        lock = self.lock
        if lock is None:
            return stop
        while self._acquire() is False:
            if stop.wait(self.lock_retry_seconds):
                return None
        if stop.is_set():
            return None
        log.info("%s: serving the mailbox (lock held: %s)", self.channel, self.stats.lock_held)
        # Another instance may have moved the cursor while we waited: read it again.
        self.keeper.loaded = False
        self._done.clear()
        ended = threading.Event()

        def watch() -> None:
            while not stop.wait(1.0):
                if lock.alive():
                    continue
                if self._acquire() is False:
                    log.warning("%s: lock lost to another instance; stop polling", self.channel)
                    break
            ended.set()

        threading.Thread(target=watch, name=f"{self.channel}-lock", daemon=True).start()
        return ended

    def poll_once(self) -> None:
        """Connect, take everything new, disconnect (tests and one-shot use). Never raises for a
        full spool (that is recorded in stats); raises connection and login errors."""
        client = self._open()
        try:
            self._drain(client, threading.Event())
            self._fetched()
        except _SpoolUnavailableError:
            pass
        finally:
            self._close(client)
            self._flush()

    # ------------------------------------------------------------------ session

    def _open(self) -> Any:
        box = self.box
        if self.password is None:
            raise MailboxError(
                f"no password: set $GATEWAY_IMAP_PASSWORD_{box.name.upper().replace('-', '_')} "
                f"or the credential imap-{box.name}"
            )
        if box.tls == "plain" and not (box.allow_plaintext and box.host.lower() in LOCAL_HOSTS):
            # The loader refuses this too; checked again because a password is about to be sent.
            raise MailboxError("plaintext IMAP is only allowed to localhost with allow_plaintext")
        context = None
        if box.tls != "plain":
            context = ssl.create_default_context(cafile=box.ca_file or None)
        client = IMAPClient(
            box.host,
            port=box.port,
            ssl=box.tls == "implicit",
            ssl_context=context,
            timeout=_SOCKET_TIMEOUT_S,
        )
        try:
            if box.tls == "starttls":
                # Capabilities from the greeting: a server (or a man in the middle) that does not
                # offer STARTTLS gets no login at all, never a plaintext fallback.
                if not client.has_capability("STARTTLS"):
                    raise StartTlsRequiredError(
                        f"{box.host}:{box.port} does not offer STARTTLS; refusing to log in "
                        "in plaintext"
                    )
                client.starttls(context)
            try:
                client.login(box.username, self.password)
            except LoginError as exc:
                detail = str(exc)  # imapclient renders the server's bytes as "b'...'"
                if detail[:2] in ("b'", 'b"') and detail[-1:] == detail[1]:
                    detail = detail[2:-1]
                raise MailboxError(f"login as {box.username!r} refused: {detail}") from exc
            self._prepare_folders(client)
            self._select(client)
        except BaseException:
            self._close(client)
            raise
        self.stats.connected = True
        log.info("%s: connected to %s:%s (%s)", self.channel, box.host, box.port, box.tls)
        return client

    def _close(self, client: Any) -> None:
        self.stats.connected = False
        self.stats.idle = False
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            try:
                client.shutdown()
            except Exception:
                pass

    def _prepare_folders(self, client: Any) -> None:
        wanted = [self.box.quarantine_folder]
        if self.box.after_intake == "move":
            wanted.append(self.box.processed_folder)
        for folder in wanted:
            if not client.folder_exists(folder):
                try:
                    client.create_folder(folder)
                    log.info("%s: created folder %r", self.channel, folder)
                except imaplib.IMAP4.abort:
                    raise
                except imaplib.IMAP4.error:
                    if not client.folder_exists(folder):  # else: created meanwhile by another
                        raise

    def _select(self, client: Any) -> None:
        info = client.select_folder(self.box.folder)
        validity = int(info[b"UIDVALIDITY"])
        self.keeper.load()
        cursor = self.keeper.cursor
        if cursor.uidvalidity != validity:
            if cursor.uidvalidity is not None:
                # RFC 3501 2.3.1.1: the folder was rebuilt and old UIDs mean nothing. Start over;
                # what we spooled before is recognised by the dedup key, not by its UID.
                log.warning(
                    "%s: UIDVALIDITY changed from %s to %s; rescanning %r",
                    self.channel,
                    cursor.uidvalidity,
                    validity,
                    self.box.folder,
                )
                self.stats.rescans += 1
            self._done.clear()
            self._rescan = True
            self.keeper.update(Cursor(validity, 0))
        else:
            self.keeper.update(cursor)
        self.attempts.use(validity)

    def _serve(self, client: Any, stop: threading.Event) -> None:
        use_idle = self.box.idle and client.has_capability("IDLE")
        self.stats.idle = use_idle
        spool_failures = 0
        while not stop.is_set():
            try:
                self._drain(client, stop)
                spool_failures = 0
                self._fetched()
            except _SpoolUnavailableError:
                # Temporary (DESIGN promise 1): the messages stay unseen in place. Keep the
                # connection; back off before trying again.
                spool_failures += 1
                stop.wait(self._backoff(spool_failures))
                client.noop()
                continue
            self._flush()
            if _mail_arrived_meanwhile(client):
                continue  # look again now: IDLE would not announce it (see the function)
            if use_idle:
                self._idle(client, stop)
            else:
                stop.wait(self.box.poll_seconds)
                if not stop.is_set():
                    client.noop()

    def _idle(self, client: Any, stop: threading.Event) -> None:
        client.idle()
        done = False
        try:
            deadline = time.monotonic() + self.idle_renew_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                if _input_buffered(client):
                    break  # announced with `+ idling` (see the function): look again now
                started = time.monotonic()
                responses = client.idle_check(timeout=_IDLE_SLICE_S)
                if any(_is_bye(r) for r in responses):
                    raise ConnectionError("server closed the connection (BYE)")
                if responses:
                    break  # EXISTS, EXPUNGE, ...: look again (a keep-alive costs one SEARCH)
                if time.monotonic() - started < _IDLE_SLICE_S / 2:
                    break  # readable but nothing parsed: EOF; idle_done/NOOP will tell
                if self.keeper.dirty or self.attempts.dirty:
                    self._flush()
            done = True
        finally:
            if done:
                client.idle_done()
            else:
                try:
                    client.idle_done()
                except Exception:
                    pass

    # ------------------------------------------------------------------ intake

    def _candidates(self, client: Any) -> list[int]:
        cursor = self.keeper.cursor
        if self._rescan and self.box.after_intake == "flag":
            # No trustworthy cursor in flag mode: what we took before is \Seen.
            found = client.search(["UNSEEN", "NOT", "DELETED"])
        else:
            found = client.search(["UID", f"{cursor.last_uid + 1}:*", "NOT", "DELETED"])
        # "n:*" always matches the highest UID, even below n (RFC 3501 6.4.8): filter.
        return sorted(
            int(uid) for uid in found if int(uid) > cursor.last_uid and int(uid) not in self._done
        )

    def _drain(self, client: Any, stop: threading.Event) -> None:
        """Take every new message, batch by batch, until none is left."""
        while not stop.is_set():
            uids = self._candidates(client)
            if not uids:
                self._rescan = False
                return
            batch = uids[: self.box.batch_size]
            try:
                self._process_batch(client, batch)
            finally:
                self._advance(batch)
            self._flush()

    def _process_batch(self, client: Any, batch: list[int]) -> None:
        """Spool and acknowledge what we can of ``batch``; UIDs dealt with go to ``_done``."""
        sizes = client.fetch(batch, ["RFC822.SIZE"])
        groups: list[list[int]] = [[]]
        group_bytes = 0
        for uid in batch:
            if uid not in sizes:
                self._done.add(uid)  # expunged meanwhile (by a person or another client)
                self.attempts.forget([uid])
                continue
            size = int(sizes[uid].get(b"RFC822.SIZE", 0))
            if size > self.max_message_bytes:
                self._quarantine(
                    client,
                    uid,
                    f"{size} bytes is over limits.max_message_bytes ({self.max_message_bytes})",
                )
                self._done.add(uid)
                continue
            if groups[-1] and group_bytes + size > _MAX_FETCH_BYTES:
                groups.append([])
                group_bytes = 0
            groups[-1].append(uid)
            group_bytes += size
        for group in groups:
            if group:
                self._take(client, group)

    def _take(self, client: Any, uids: list[int]) -> None:
        bodies = self._fetch_bodies(client, uids)
        ready: list[tuple[int, bytes, Envelope]] = []
        validity = self.keeper.cursor.uidvalidity
        for uid in uids:
            body = bodies.get(uid)
            try:
                if self.fault is not None:
                    self.fault("fetch", uid)
                if isinstance(body, Exception):
                    raise body
                if body is None:
                    raise LookupError("the server returned no body")
            except _CONNECTION_ERRORS:
                raise
            except Exception as exc:
                if self._failed(client, uid, exc):
                    self._done.add(uid)
                continue
            envelope = Envelope(
                channel="imap",
                received_at=business_clock.now(),
                mail_from=None,
                recipients=tuple(r.lower() for r in self.box.recipients),
                peer=self.channel,
                meta=(
                    ("imap_uid", str(uid)),
                    ("imap_mailbox", self.box.name),
                    ("uidvalidity", str(validity)),
                ),
            )
            ready.append((uid, body, envelope))
        spooled: list[int] = []
        spool_error: SpoolError | None = None
        outcomes = self._spool_all([(body, envelope) for _uid, body, envelope in ready])
        for (uid, _body, _envelope), outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, SpoolError):
                if spool_error is None:
                    log.error(
                        "%s: spool refused UID %s (and maybe more), leaving it unseen: %s",
                        self.channel,
                        uid,
                        outcome,
                    )
                spool_error = outcome
                continue
            self.stats.accepted += 1
            spooled.append(uid)
        if spool_error is not None:
            self.stats.temp_failures += 1  # one refusal per attempt, however many it left
            self._error(spool_error)
        if spooled:
            crash_point("imap-after-spool-before-move")
            self._acknowledge(client, spooled)
            self._done.update(spooled)
        if spool_error is not None:
            raise _SpoolUnavailableError(str(spool_error))

    def _spool_all(self, items: list[tuple[bytes, Envelope]]) -> list[str | SpoolError]:
        """Spool a fetch group at once; each outcome (entry id or SpoolError) is its message's.

        Through ``enqueue_async``, so the spool's writer fsyncs the group's files together and
        incoming/ once (group commit) instead of twice per message: the difference between
        ~100 and several hundred messages a second on a disk where fsync costs milliseconds.
        Durability per message is unchanged: a message is acknowledged only once its own
        write has returned.
        """
        if not items:
            return []

        async def spool_group() -> list[str | BaseException]:
            return await asyncio.gather(
                *(self.spool.enqueue_async(raw, envelope) for raw, envelope in items),
                return_exceptions=True,
            )

        outcomes: list[str | SpoolError] = []
        for outcome in asyncio.run(spool_group()):
            if isinstance(outcome, BaseException) and not isinstance(outcome, SpoolError):
                raise outcome  # a bug, not a full disk: the session ends, the mail stays unseen
            outcomes.append(outcome)
        return outcomes

    def _fetch_bodies(self, client: Any, uids: list[int]) -> dict[int, bytes | Exception]:
        """Raw bytes by UID. A failed batch FETCH is retried UID by UID, so one unreadable
        message only fails itself."""
        try:
            return _bodies(client.fetch(uids, ["BODY.PEEK[]"]))
        except _CONNECTION_ERRORS:
            raise
        except imaplib.IMAP4.error:
            if len(uids) == 1:
                raise
        out: dict[int, bytes | Exception] = {}
        for uid in uids:
            try:
                out.update(_bodies(client.fetch([uid], ["BODY.PEEK[]"])))
            except _CONNECTION_ERRORS:
                raise
            except imaplib.IMAP4.error as exc:
                out[uid] = exc
        return out

    def _acknowledge(self, client: Any, uids: list[int]) -> None:
        """Only ever called with UIDs whose spool write has returned (DESIGN promise 1)."""
        if self.fault is not None:
            for uid in uids:
                self.fault("ack", uid)
        if self.box.after_intake == "move":
            self._move(client, uids, self.box.processed_folder)
        else:
            client.add_flags(uids, [_SEEN], silent=True)
        self.stats.acknowledged += len(uids)
        self.attempts.forget(uids)

    def _failed(self, client: Any, uid: int, exc: Exception) -> bool:
        """Count a failed fetch; quarantine at max_attempts. True if the message was moved."""
        attempts = self.attempts.failed(uid)
        self.stats.fetch_failures += 1
        self._error(exc)
        log.warning(
            "%s: UID %s failed (%d/%d): %s", self.channel, uid, attempts, self.box.max_attempts, exc
        )
        if attempts < self.box.max_attempts:
            return False
        self._quarantine(client, uid, f"failed {attempts} times: {exc}")
        return True

    def _quarantine(self, client: Any, uid: int, reason: str) -> None:
        self._move(client, [uid], self.box.quarantine_folder)
        self.attempts.forget([uid])
        self.stats.quarantined += 1
        self.stats.failed(f"UID {uid} quarantined: {reason}", business_clock.now())
        log.error(
            "%s: moved UID %s to %r: %s", self.channel, uid, self.box.quarantine_folder, reason
        )

    def _move(self, client: Any, uids: list[int], folder: str) -> None:
        if client.has_capability("MOVE"):  # RFC 6851: atomic
            client.move(uids, folder)
            return
        # COPY, then delete only these UIDs (UIDPLUS, RFC 4315) or, lacking it, EXPUNGE. A crash
        # in between leaves a copy in both folders: the dedup key absorbs the refetch.
        client.copy(uids, folder)
        client.add_flags(uids, [_DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            client.expunge()

    def _advance(self, batch: list[int]) -> None:
        """Move the cursor over the handled prefix of ``batch``; handled UIDs past a failure
        stay in ``_done`` so they are not fetched again."""
        cursor = self.keeper.cursor
        last = cursor.last_uid
        for uid in batch:
            if uid not in self._done:
                break
            last = uid
        self._done = {uid for uid in self._done if uid > last}
        self.keeper.update(Cursor(cursor.uidvalidity, last))

    # ------------------------------------------------------------------ helpers

    def _flush(self) -> None:
        """Write the cursor and fetch attempts if they changed and the database lets us."""
        self.keeper.flush()
        self.attempts.flush()

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter (so many gateways do not reconnect in step)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(failures - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)

    def _error(self, exc: BaseException) -> None:
        self.stats.failed(f"{type(exc).__name__}: {exc}", business_clock.now())

    def _fetched(self) -> None:
        """A whole successful look at the folder: the mailbox works, an earlier error is past."""
        self.stats.last_fetch_at = business_clock.wall_seconds()
        self.stats.fetched(business_clock.now())


def _bodies(response: dict[Any, Any]) -> dict[int, bytes | Exception]:
    out: dict[int, bytes | Exception] = {}
    for uid, data in response.items():
        body = data.get(b"BODY[]")
        if isinstance(body, bytes):
            out[int(uid)] = body
    return out


def _is_bye(response: Any) -> bool:
    return isinstance(response, tuple) and bool(response) and response[0] == b"BYE"


class PollerThread(threading.Thread):
    """A daemon thread running one :class:`MailboxPoller` until ``stop`` is set."""

    def __init__(self, poller: MailboxPoller, stop: threading.Event) -> None:
        super().__init__(name=poller.channel, daemon=True)
        self.poller = poller
        self.stop = stop

    def run(self) -> None:
        self.poller.run(self.stop)


def start_poller(
    box: ImapMailbox,
    settings: Settings,
    spool: Spool,
    stop: threading.Event,
    store: ChannelStateStore,
) -> PollerThread:
    """A started thread serving `box` until `stop` is set; its password is read now."""
    poller = MailboxPoller(
        box,
        spool,
        password=mailbox_password(box.name),
        max_message_bytes=settings.gateway.limits.max_message_bytes,
        store=store,
        lock=(
            ClusterLock(store.engine, f"imap:{box.name}")
            if needs_cluster_lock(settings.database_url)
            else None
        ),
    )
    thread = PollerThread(poller, stop)
    thread.start()
    return thread


@dataclass(frozen=True)
class MailboxChanges:
    """What a reload changes of the `[[imap]]` tables, by mailbox name: new mailboxes, gone
    ones, and those whose table changed with the keys that did."""

    added: tuple[ImapMailbox, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[tuple[ImapMailbox, tuple[str, ...]], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def mailbox_changes(old: tuple[ImapMailbox, ...], new: tuple[ImapMailbox, ...]) -> MailboxChanges:
    """Compare two sets of `[[imap]]` tables (a reload applies the difference)."""
    before = {box.name: box for box in old}
    after = {box.name: box for box in new}
    changed = []
    for name, box in after.items():
        was = before.get(name)
        if was is not None and was != box:
            keys = tuple(
                f.name
                for f in dataclasses.fields(box)
                if getattr(was, f.name) != getattr(box, f.name)
            )
            changed.append((box, keys))
    return MailboxChanges(
        added=tuple(box for name, box in after.items() if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(changed),
    )
