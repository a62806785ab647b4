"""The one path every message takes, from spool entry to committed ticket.

Owns the order of the stages, batching, and the per-stage timings (for `bench/`). Each stage is
a plain function in `gateway/stages/`; only `persist.record` writes.

A batch is one database transaction (one durable commit for up to `workers.batch_size`
messages), written first without savepoints; if one of its messages fails, the transaction rolls
back and the batch is written again with one SAVEPOINT per message, so one bad message rolls
back alone (a savepoint and its release cost two statements a message: issue 20). Threading runs
inside that transaction, so a reply later in the same batch finds the ticket an earlier message
just opened; on PostgreSQL the transaction first takes an advisory lock per voice call and per
texting phone, so two workers never open two tickets for what must thread into one. Blobs for
the whole batch are made durable, and the whole batch is classified with one call to the
classifier, before the transaction starts. Storage errors (the database is
down) escape as `StorageUnavailableError` for the worker to defer the whole batch; anything else
fails only its own message with the stage that raised. If the batch fails as a whole all the
same, the worker runs its messages again one batch of one at a time (issue 20 item 7).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from classifiers.types import Verdict
from gateway import clock as business_clock
from gateway.emergency.rules import authenticate, for_classifier
from gateway.intake.blobs import BlobStore
from gateway.intake.faults import crash_point
from gateway.intake.spool import Envelope
from gateway.message import ParsedMessage
from gateway.service.runtime import Runtime
from gateway.stages.automated import check_automated
from gateway.stages.classify import classify, classify_batch
from gateway.stages.decide import decide
from gateway.stages.identify import identify
from gateway.stages.parse import parse
from gateway.stages.persist import BatchWrites, Persisted, begin_batch, record
from gateway.stages.thread import reply_ids, thread
from gateway.storage.queries import SessionThreadLookup, index_message_ids

log = logging.getLogger("gateway.parse")


class StageError(Exception):
    """A stage raised for one message; carries which one, for the quarantine record."""

    def __init__(self, stage: str, error: BaseException) -> None:
        self.stage = stage
        self.error = error
        super().__init__(f"{stage}: {type(error).__name__}: {error}")


class StorageUnavailableError(Exception):
    """The database cannot be reached: defer the whole batch, never count it against mail."""


class MessageTimeoutError(Exception):
    pass


# PostgreSQL error classes that are this message's fault, though psycopg raises some of them as
# OperationalError (class 54, e.g. an index entry over btree's 2,704 bytes): retried as an
# outage they would defer the batch forever; as a failure the message is quarantined instead.
MESSAGE_FAULT_SQLSTATE_CLASSES = frozenset({"22", "54"})  # data exception, program limit exceeded


def storage_unavailable(error: BaseException) -> bool:
    """Is this the database being down (Defer), rather than this message being bad?"""
    if isinstance(error, PoolTimeoutError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError):
        sqlstate = getattr(error.orig, "sqlstate", None)  # SQLite's errors carry none
        return not (isinstance(sqlstate, str) and sqlstate[:2] in MESSAGE_FAULT_SQLSTATE_CLASSES)
    return False


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise MessageTimeoutError in the main thread after `seconds` (no-op in other threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_sig: int, _frame: FrameType | None) -> None:
        raise MessageTimeoutError(f"processing took longer than {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Timings:
    """Wall time per stage, in seconds (the worker is single-threaded): totals for the bench,
    and histogram buckets (`BUCKETS`, upper bounds) for /metrics. Per message for identify,
    thread, classify, decide and persist (persist includes releasing the message's savepoint,
    where SQLAlchemy flushes what it still holds); per batch for blobs and commit. Classify
    runs once per batch; its time is shared out evenly over the batch's messages."""

    totals: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, list[int]] = field(default_factory=dict)
    count: int = 0

    def add(self, stage: str, seconds: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds
        counts = self.buckets.setdefault(stage, [0] * (len(BUCKETS) + 1))
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1  # the last slot is +Inf


BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Job:
    raw: bytes
    envelope: Envelope
    spool_id: str
    # The spool file holding `raw` after its header line, when the job came from the spool:
    # the raw message's blob is then a hard link of it, not a copy (gateway/intake/blobs.py).
    source: Path | None = None


@dataclass(frozen=True)
class JobResult:
    spool_id: str
    persisted: Persisted | None
    error: StageError | None
    # Nothing written: a reply that found no thread while an older message may still be on
    # its way into the database (`hold_reply`); the worker hands it back to the spool.
    held: bool = False


# Whether a reply whose thread look-up found nothing should wait for older messages still
# being written elsewhere (the worker's rule: gateway/service/worker.py).
HoldReply = Callable[[Job], bool]


class _Clock:
    def __init__(self, timings: Timings | None) -> None:
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings.add(stage, now - self.t)
            self.t = now

    def share(self, stage: str, messages: int) -> None:
        """A lap that did a whole batch's work: each message is charged an equal part, so
        per-message means and histograms stay comparable with stages run one by one."""
        if self.timings is not None:
            now = time.perf_counter()
            for _ in range(messages):
                self.timings.add(stage, (now - self.t) / messages)
            self.t = now


def process_batch(
    jobs: list[Job],
    runtime: Runtime,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    timings: Timings | None = None,
    now: datetime | None = None,
    hold_reply: HoldReply | None = None,
) -> list[JobResult]:
    now = now or business_clock.now()
    settings = runtime.settings
    limit = settings.gateway.limits.per_message_seconds
    results: dict[str, JobResult] = {}
    parsed: list[tuple[Job, ParsedMessage]] = []
    clock = _Clock(timings)
    for job in jobs:
        try:
            with time_limit(limit):
                message = parse(
                    job.raw,
                    job.envelope,
                    job.spool_id,
                    settings.gateway.limits.max_attachment_bytes,
                )
                # Mail asking for emergency support: is its sender who From says (evidence a
                # charge rests on)? Computed from the raw bytes, before any database work.
                message = authenticate(message, job.raw, settings.emergency, runtime.dkim_resolver)
        except (Exception, MessageTimeoutError) as exc:
            results[job.spool_id] = JobResult(job.spool_id, None, StageError("parse", exc))
            clock.lap("parse")
            continue
        parsed.append((job, message))
        clock.lap("parse")
    if parsed:
        items = [(job.raw, m.raw_sha256) for job, m in parsed]
        items += [(a.content, a.sha256) for _, m in parsed for a in m.attachments if a.content]
        spooled = {m.raw_sha256: job.source for job, m in parsed if job.source is not None}
        blobs.put_many(items, spooled)  # durable before the transaction that names them
        clock.lap("blobs")
        verdicts = _classify_batch(parsed, runtime, limit)
        clock.share("classify", len(parsed))
        try:
            try:
                results.update(_write(parsed, runtime, sessions, now, limit, clock, verdicts,
                                      hold_reply=hold_reply))
            except _RetryWithSavepoints:
                # A message failed with no savepoint to roll back to (or a twin claimed its
                # key): the whole batch rolled back; again, each message in a savepoint of its
                # own, so it fails alone.
                results.update(
                    _write(parsed, runtime, sessions, now, limit, clock, verdicts,
                           savepoints=True, hold_reply=hold_reply)
                )
        except (Exception, MessageTimeoutError) as exc:
            if storage_unavailable(exc):
                raise StorageUnavailableError(str(exc)) from exc
            raise
        for job, message in parsed:
            _log_parse_defects(message, results[job.spool_id])
    if timings is not None:
        timings.count += len(jobs)
    return [results[job.spool_id] for job in jobs]


class _RetryWithSavepoints(Exception):
    """A message of a batch written without savepoints failed: roll the batch back and write it
    again with one savepoint per message."""


def _write(
    parsed: list[tuple[Job, ParsedMessage]],
    runtime: Runtime,
    sessions: sessionmaker[Session],
    now: datetime,
    limit: float,
    clock: _Clock,
    verdicts: dict[str, Verdict],
    *,
    savepoints: bool = False,
    hold_reply: HoldReply | None = None,
) -> dict[str, JobResult]:
    """The batch's transaction: every message's identify, thread, decide and persist, one
    commit. First without savepoints (two statements and two compilations a message, about a
    tenth of persist, issue 20 outcome 1): every message succeeds in almost every batch. If one
    fails, `_RetryWithSavepoints` rolls the whole transaction back and the caller writes the
    batch again with `savepoints`, where a message that fails rolls back alone."""
    results: dict[str, JobResult] = {}
    with sessions.begin() as session:
        messages = [message for _, message in parsed]
        _lock_threads(session, messages)
        # The intakes the batch's spool entries and dedup keys already have, its senders'
        # recent automatic messages: persist's share of the batch, charged to it.
        batch = begin_batch(session, messages, runtime.persist, now, deferred=not savepoints)
        clock.share("persist", len(parsed))
        if not savepoints:
            # The batch's replies' Message-IDs, looked up at once (issue 20: one query for a
            # batch's thread look-ups); with savepoints, each message asks on its own.
            batch.thread_index = index_message_ids(session, map(reply_ids, messages))
            clock.share("thread", len(parsed))
        batch.watch(session.connection())
        try:
            for job, message in parsed:
                result = _one(
                    session,
                    job,
                    message,
                    runtime,
                    now,
                    limit,
                    clock,
                    verdicts.get(job.spool_id),
                    batch,
                    savepoints,
                    hold_reply,
                )
                if result.error is not None and not savepoints:
                    raise _RetryWithSavepoints(result.error)
                results[job.spool_id] = result
            # The rows persist kept for the end of the batch: one statement per table.
            batch.write(session.connection())
        except IntegrityError as exc:
            if not batch.behind:
                raise
            # A row written behind met a unique constraint (a twin's claim): which message
            # wrote it is known only with one savepoint a message.
            raise _RetryWithSavepoints(exc) from exc
        finally:
            batch.unwatch()
        if batch.spoilt:
            # A row written behind failed under a statement whose caller caught the error.
            raise _RetryWithSavepoints(RuntimeError("a row written behind failed"))
        clock.share("persist", len(parsed))
        crash_point("before-commit")
    clock.lap("commit")
    return results


def _classify_batch(
    parsed: list[tuple[Job, ParsedMessage]], runtime: Runtime, limit: float
) -> dict[str, Verdict]:
    """Every parsed message's verdict from one call to the classifier (its vectorisation and
    model product once per batch, not once per message), before the transaction opens: the
    classifier reads no database. If that call fails or overruns, nothing is returned and
    `_one` classifies each message on its own, so a message the classifier chokes on fails
    alone and never its batch (issue 20 item 7)."""
    settings = runtime.settings
    try:
        # The per-message limit, once per message in the batch: a batch may take as long as
        # its messages one by one would have.
        with time_limit(limit * len(parsed)):
            # The problem as the customer describes it, without emergency.toml's markers.
            verdicts = classify_batch(
                [for_classifier(message, settings.emergency) for _, message in parsed],
                runtime.engine,
                settings.severity.default,
            )
    except (Exception, MessageTimeoutError) as exc:
        log.warning("batch classification failed (%s); classifying one by one", exc)
        return {}
    return {job.spool_id: verdict for (job, _), verdict in zip(parsed, verdicts, strict=True)}


def _log_parse_defects(message: ParsedMessage, result: JobResult) -> None:
    """What parsing lost or altered, logged once per spool entry (issue 19): after the commit,
    so a deferred or retried batch logs nothing twice; never for a duplicate (its first copy
    was logged)."""
    done = result.persisted
    if not message.parse_defects or done is None or done.outcome == "duplicate":
        return
    log.warning(
        "parse defects in %s (%s %s): %s",
        message.spool_id,
        done.outcome,
        done.reference or "-",
        ", ".join(d.encoded() for d in message.parse_defects),
    )


def _lock_threads(session: Session, messages: list[ParsedMessage]) -> None:
    """PostgreSQL: one batch at a time per call / per phone, so two workers (or instances) never
    both open a ticket for events that must thread together (tests/faults found a voicemail's
    callbacks making two tickets). Locks are taken up front in sorted order: no deadlock between
    batches; they end with the transaction. SQLite's BEGIN IMMEDIATE already serialises writers.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = {key for message in messages if (key := _thread_key(message))}
    for key in sorted(keys):
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def _thread_key(message: ParsedMessage) -> str | None:
    """What threads by identity rather than by headers: one voice call, one phone's texts."""
    if message.channel == "twilio-voice" and (call := message.header("x-twilio-callsid")):
        return f"thread:twilio-call:{call}"
    if message.channel == "twilio-sms" and message.sender:
        return f"thread:twilio-sms:{message.sender}"
    return None


def _one(
    session: Session,
    job: Job,
    message: ParsedMessage,
    runtime: Runtime,
    now: datetime,
    limit: float,
    clock: _Clock,
    verdict: Verdict | None,
    batch: BatchWrites,
    savepoint: bool,
    hold_reply: HoldReply | None = None,
) -> JobResult:
    """One message's identify, thread, decide and persist in the batch's transaction: in a
    savepoint of its own when `savepoint` (a batch's retry), which a twin's claim of its dedup
    key rolls back for one more look; otherwise any failure is returned at once, and the
    caller rolls the whole batch back."""
    settings = runtime.settings
    for attempt in range(2):
        stage = "identify"
        try:
            scope = session.begin_nested() if savepoint else contextlib.nullcontext()
            with time_limit(limit), scope:
                customer = identify(message, runtime.directory)
                stage = "automated"
                automated = check_automated(
                    message,
                    own_domain=settings.gateway.gateway.mail_domain,
                    trust_spam_headers=settings.gateway.automated.trust_spam_headers,
                )
                clock.lap("identify")
                stage = "thread"
                threaded = thread(
                    message,
                    customer,
                    SessionThreadLookup(session, batch.thread_index),
                    now,
                    runtime.reopen_window,
                    timedelta(hours=settings.gateway.webhooks.sms_thread_window_hours),
                    runtime.incident_window,
                )
                clock.lap("thread")
                if (threaded.kind == "new" and hold_reply is not None and reply_ids(message)
                        and hold_reply(job)):
                    # Its original may be in another worker's batch, not yet committed: written
                    # now, the reply would open a ticket of its own (issue 20 round 9).
                    return JobResult(job.spool_id, None, None, held=True)
                stage = "classify"
                if verdict is None:  # the batch's call failed: this message on its own
                    # The problem as the customer describes it, without emergency.toml's markers.
                    verdict = classify(
                        for_classifier(message, settings.emergency),
                        customer,
                        runtime.engine,
                        settings.severity.default,
                    )
                    clock.lap("classify")
                stage = "decide"
                decision = decide(
                    message, customer, verdict, threaded, automated, now, runtime.policy
                )
                clock.lap("decide")
                stage = "persist"
                crash_point("after-ack-before-persist")
                persisted = record(
                    session,
                    message,
                    customer,
                    automated,
                    threaded,
                    verdict,
                    decision,
                    runtime.persist,
                    now,
                    batch,
                    # A retry after a twin's claim looks again, for its intake.
                    look_again=attempt > 0,
                )
                if not savepoint:
                    # What persist left pending in the ORM fails here, charged to this message,
                    # not at the commit, charged to its batch.
                    session.flush()
            # After the savepoint's release: SQLAlchemy flushes there what persist left
            # pending, and that is persist's cost.
            clock.lap("persist")
            return JobResult(job.spool_id, persisted, None)
        except IntegrityError as exc:
            batch.forget()  # what the message left for its write rolled back with it
            if not savepoint:  # the transaction is spoilt: the batch is written again
                return JobResult(job.spool_id, None, StageError(stage, exc))
            # A twin (another worker or instance) claimed the same dedup key between our check
            # and our insert; the savepoint is rolled back. Once more: now we see its row and
            # record a duplicate.
            if attempt == 1:
                return JobResult(job.spool_id, None, StageError(stage, exc))
        except (Exception, MessageTimeoutError) as exc:
            if storage_unavailable(exc):
                raise
            batch.forget()
            return JobResult(job.spool_id, None, StageError(stage, exc))
    raise AssertionError("unreachable")


def process(
    raw: bytes,
    envelope: Envelope,
    spool_id: str,
    runtime: Runtime,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    timings: Timings | None = None,
    now: datetime | None = None,
) -> Persisted:
    """One message through the path (a batch of one); raises StageError on failure."""
    (result,) = process_batch(
        [Job(raw, envelope, spool_id)], runtime, sessions, blobs, timings, now
    )
    if result.error is not None:
        raise result.error
    assert result.persisted is not None
    return result.persisted
