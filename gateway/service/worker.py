"""The worker: claims spool entries and runs each through the pipeline, one at a time.

Owns what happens after a failed attempt (DESIGN promise 3):
* storage unreachable -> `Defer`: the entry goes back *without* counting an attempt, and the
  worker backs off (capped, jittered) — a database outage never quarantines mail;
* any other error, or a message over the per-message time limit -> the attempt counts; after
  `max_attempts` the entry is quarantined with its stage and error, and the next one flows.
Runs in its own process (CPU work never stalls the listeners' event loop). Also runs the outbox
sender on a thread, and there, in worker 0, the escalation scheduler every
`[escalation] interval_seconds`, and the release of emergency holds nobody confirmed (every
emergency.toml `check_interval_seconds`); worker 0 also forwards ticket changes to help-desk
webhooks on a thread of their own. Never accepts network input.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from gateway import clock as business_clock
from gateway.emergency import holds as emergency_holds
from gateway.intake.blobs import BlobStore
from gateway.intake.spool import Entry, Spool
from gateway.outbound import escalation_scheduler, forwarding_sender
from gateway.outbound import mail_sender as outbox_sender
from gateway.outbound import twilio_sender as twilio_outbound
from gateway.pipeline import (
    HoldReply,
    Job,
    JobResult,
    StorageUnavailableError,
    Timings,
    process_batch,
)
from gateway.pipeline import storage_unavailable as storage_unavailable
from gateway.service.runtime import RuntimeBox
from gateway.storage.db import make_engine, session_factory

log = logging.getLogger(__name__)

# A batch stops growing once its messages hold this many bytes (a larger message is a batch of
# its own): ordinary mail still batches by `workers.batch_size`.
BATCH_BYTES = 8 * 1024 * 1024
# A reply that found no thread waits for an older message another worker claimed at most this
# long ago (Worker._hold_reply); a batch of nothing but such replies pauses this long before
# claiming again.
REPLY_WAIT_SECONDS = 30.0
HELD_PAUSE_SECONDS = 0.05


@dataclass
class WorkerStats:
    processed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    quarantined: int = 0
    deferrals: int = 0
    held_replies: int = 0  # replies handed back to wait for an older message (_hold_reply)
    last_error: str | None = None
    max_seconds: float = 0.0
    last_entry_age: float = 0.0
    storage_down_since: float | None = None


class Worker:
    def __init__(self, box: RuntimeBox, *, index: int = 0, run_outbox: bool = True) -> None:
        self.box = box
        self.index = index
        settings = box.current.settings
        self.spool = Spool(
            settings.spool_dir,
            fsync=settings.gateway.spool.fsync,
            max_attempts=settings.gateway.spool.max_attempts,
        )
        self.blobs = BlobStore(settings.state_dir / "blobs", fsync=settings.gateway.spool.fsync)
        self.engine = make_engine(settings.database_url, immediate=True)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.stats = WorkerStats()
        self.timings = Timings()
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.run_outbox = run_outbox
        self._backoff = 0.0

    # -- one batch ------------------------------------------------------------------------

    def _claim_batch(self, size: int) -> list[Entry]:
        """Up to `size` entries holding at most BATCH_BYTES between them (a larger message is a
        batch of its own): a batch's messages and their decoded attachments are all in memory
        until its commit, so ten 34 MB mails arriving at once are handled one by one, not
        together (issue 20 item 5)."""
        entries: list[Entry] = []
        held = 0
        while len(entries) < size:
            entry = self.spool.claim()
            if entry is None:
                break
            if entries and held + entry.size > BATCH_BYTES:
                self.spool.release(entry)  # the next batch's first, as the oldest waiting
                break
            entries.append(entry)
            held += entry.size
        return entries

    def step(self) -> bool:
        """Process one batch if there is work. Returns False when the spool was empty."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.box.reload()
        runtime = self.box.current
        entries = self._claim_batch(runtime.settings.gateway.workers.batch_size)
        if not entries:
            return False
        if self.stopping.is_set():  # SIGTERM arrived while claiming: hand the batch back
            for entry in entries:
                self.spool.release(entry)
            return False
        started = time.monotonic()
        jobs: list[Job] = []
        by_id: dict[str, Entry] = {}
        for entry in entries:
            self.stats.last_entry_age = max(
                0.0, (business_clock.now() - entry.envelope.received_at).total_seconds()
            )
            try:
                jobs.append(Job(self.spool.read_raw(entry), entry.envelope, entry.id, entry.path))
                by_id[entry.id] = entry
            except Exception as exc:  # the entry itself cannot be read
                self._failed(entry, "spool", exc)
        hold = self._hold_reply(set(by_id))
        try:
            results = process_batch(jobs, runtime, self.sessions, self.blobs, self.timings,
                                    hold_reply=hold)
        except StorageUnavailableError as exc:
            self._defer([by_id[j.spool_id] for j in jobs], str(exc))
            return True
        except Exception as exc:
            if len(jobs) == 1:  # the message alone failed (e.g. blob disk): count it
                self._failed(by_id[jobs[0].spool_id], "batch", exc)
                return True
            # One poison message never fails its batch (issue 20 item 7): the batch rolled
            # back as a whole, so each of its messages runs again in a batch of its own and
            # only the one that fails there counts an attempt.
            log.warning("batch of %d failed (%s); each message on its own", len(jobs), exc)
            results = []
            down = False
            for n, job in enumerate(jobs):
                try:
                    results += process_batch(
                        [job], runtime, self.sessions, self.blobs, self.timings,
                        hold_reply=hold,
                    )
                except StorageUnavailableError as unavailable:
                    # The database went: the rest would each wait out the pool's timeout.
                    self._defer([by_id[j.spool_id] for j in jobs[n:]], str(unavailable))
                    down = True
                    break
                except Exception as alone:
                    self._failed(by_id[job.spool_id], "batch", alone)
            if down:  # keep the back-off the deferral set
                self._finish(results, by_id)
                return True
        self._backoff = 0.0
        self.stats.storage_down_since = None
        self._finish(results, by_id)
        if results and all(result.held for result in results):
            # Only replies waiting for another worker's commit: give it the moment it needs
            # rather than claim them straight back.
            self.stopping.wait(HELD_PAUSE_SECONDS)
        per_message = (time.monotonic() - started) / max(1, len(jobs))
        self.stats.max_seconds = max(self.stats.max_seconds, per_message)
        return True

    def _hold_reply(self, mine: set[str]) -> HoldReply:
        """The pipeline's rule for a reply whose thread look-up found nothing: wait (hand it
        back to the spool, no attempt counted) while another worker holds an older entry,
        claimed and not yet committed, which may be the message it answers. Written at once,
        it would open a ticket of its own and its original another. Only claims made in the
        last REPLY_WAIT_SECONDS count: a worker that hangs on its batch delays such replies
        that long, never loses them. One instance's workers share a spool; instances on one
        PostgreSQL do not, and between them the race stays (docs/architecture.md)."""

        def hold(job: Job) -> bool:
            return bool(self.spool.claimed_before(job.spool_id, REPLY_WAIT_SECONDS, mine))

        return hold

    def _finish(self, results: list[JobResult], by_id: dict[str, Entry]) -> None:
        """Complete the entries that were recorded; count an attempt for those that failed;
        hand back the replies held for an older message."""
        self.spool.complete_many(
            [by_id[r.spool_id] for r in results if r.error is None and not r.held]
        )
        for result in results:
            entry = by_id[result.spool_id]
            if result.held:
                self.spool.release(entry)
                self.stats.held_replies += 1
                log.debug("reply %s waits for an older message another worker holds", entry.id)
                continue
            if result.error is not None:
                self._failed(entry, result.error.stage, result.error.error)
                continue
            assert result.persisted is not None
            outcome = result.persisted
            self.stats.processed += 1
            self.stats.outcomes[outcome.outcome] = self.stats.outcomes.get(outcome.outcome, 0) + 1
            log.info(
                "%s %s -> %s %s (%s)",
                entry.envelope.channel,
                entry.id,
                outcome.outcome,
                outcome.reference or "",
                outcome.reason[:200],
            )

    def _defer(self, entries: list[Entry], text: str) -> None:
        """Defer: the messages are fine, the database is not. Never counts as an attempt."""
        for entry in entries:
            self.spool.release(entry)
        self.stats.deferrals += len(entries)
        self.stats.last_error = f"storage unavailable: {text}"[:2000]
        if self.stats.storage_down_since is None:
            self.stats.storage_down_since = business_clock.wall_seconds()
            log.error("database unavailable, deferring intake: %s", text)
        self._backoff = min(10.0, max(0.2, self._backoff * 2))
        self.stopping.wait(self._backoff * (0.5 + random.random() / 2))

    def _failed(self, entry: Entry, stage: str, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"[:2000]
        self.stats.failures += 1
        self.stats.last_error = f"{stage}: {text}"
        quarantined = self.spool.fail(entry, stage=stage, error=text)
        if quarantined:
            self.stats.quarantined += 1
            log.error("quarantined %s after repeated failures at %s: %s", entry.id, stage, text)
        else:
            log.warning("attempt failed for %s at %s: %s", entry.id, stage, text)

    # -- loops ------------------------------------------------------------------------------

    def drain(self) -> int:
        """Process until the spool is empty (tests, `gateway worker --drain`); the number of
        spool entries recorded (it counted batches, so `--drain` said "processed 4 spool
        entries" of seven)."""
        before = self.stats.processed
        while self.step():
            pass
        return self.stats.processed - before

    def run(self, status_path: Path | None = None) -> None:
        poll = self.box.current.settings.gateway.workers.poll_seconds
        sender: threading.Thread | None = None
        if self.run_outbox:
            sender = threading.Thread(target=self._outbox_loop, name="outbox", daemon=True)
            sender.start()
            # Forwarding has its own thread: a slow help desk never delays customers' mail.
            threading.Thread(target=self._forwarding_loop, name="forwarding", daemon=True).start()
        last_status = 0.0
        parent = os.getppid()
        while not self.stopping.is_set():
            busy = self.step()
            now = time.monotonic()
            if status_path is not None and now - last_status > 1.0:
                last_status = now
                self.write_status(status_path)
                if os.getppid() != parent:  # the daemon died (kill -9): do not linger
                    log.error("daemon process is gone; worker exits")
                    break
            if not busy:
                self.stopping.wait(poll)
        if status_path is not None:
            self.write_status(status_path)
        self.spool.close()

    def _outbox_loop(self) -> None:
        next_escalation = 0.0  # escalation: first run at once, then every interval_seconds
        next_holds = 0.0  # emergency holds nobody confirmed: likewise, every check_interval
        while not self.stopping.is_set():
            settings = self.box.current.settings
            if time.monotonic() >= next_escalation:
                next_escalation = time.monotonic() + settings.severity.escalation.interval_seconds
                self.escalate_once()
            if time.monotonic() >= next_holds:
                next_holds = time.monotonic() + settings.emergency.check_interval_seconds
                self.release_holds_once()
            try:
                sent = outbox_sender.send_due(
                    self.sessions, settings.gateway.outbound, settings.gateway.gateway.instance
                )
            except Exception as exc:
                log.warning("outbox sender: %s: %s", type(exc).__name__, exc)
                sent = 0
            # --- Twilio: SMS outbox rows, voicemail transcription deadlines (twilio_outbound) ---
            sent += twilio_outbound.run_once(self.sessions, settings)
            # --- end Twilio ---
            if not sent:
                self.stopping.wait(1.0)

    def _forwarding_loop(self) -> None:
        """Ticket changes to help-desk webhooks (gateway/outbound/forwarding_sender.py), worker 0
        only."""
        checked = None
        while not self.stopping.is_set():
            settings = self.box.current.settings
            if settings is not checked:  # at start and after each reload
                checked = settings
                forwarding_sender.warn_missing_secrets(settings.forwarding)
            done = forwarding_sender.run_once(
                self.sessions, settings.forwarding, settings.gateway.gateway.instance
            )
            if not done:
                self.stopping.wait(settings.forwarding.poll_seconds)

    def escalate_once(self) -> None:
        """One escalation scheduler run (gateway/outbound/escalation_scheduler.py), worker 0
        only."""
        runtime = self.box.current
        try:
            escalation_scheduler.run_once(
                self.sessions, runtime.settings, runtime.policy.calendars, business_clock.now()
            )
        except Exception as exc:  # a database outage or bug must not stop the outbox sender
            log.warning("escalation scheduler: %s: %s", type(exc).__name__, exc)

    def release_holds_once(self) -> None:
        """Release emergency holds nobody confirmed in time (gateway/emergency/holds.py),
        worker 0 only."""
        runtime = self.box.current
        try:
            emergency_holds.release_expired(
                self.sessions,
                runtime.settings,
                runtime.policy.calendars,
                business_clock.now(),
                runtime.persist.company,
            )
        except Exception as exc:  # a database outage or bug must not stop the outbox sender
            log.warning("emergency holds: %s: %s", type(exc).__name__, exc)

    def write_status(self, path: Path) -> None:
        data = {
            "pid": os.getpid(),
            "index": self.index,
            "time": business_clock.wall_seconds(),
            "processed": self.stats.processed,
            "outcomes": self.stats.outcomes,
            "failures": self.stats.failures,
            "quarantined": self.stats.quarantined,
            "deferrals": self.stats.deferrals,
            "held_replies": self.stats.held_replies,
            "last_error": self.stats.last_error,
            "lag_seconds": round(self.stats.last_entry_age, 3),
            "max_seconds": round(self.stats.max_seconds, 3),
            "storage_down_since": self.stats.storage_down_since,
            "config_generation": self.box.current.generation,
            "config_error": self.box.last_error,
            "stage_seconds": self.timings.totals,
            "stage_buckets": self.timings.buckets,
            "stage_count": self.timings.count,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
