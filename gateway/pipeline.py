"""The one path every message takes, from spool entry to committed ticket.

Owns the order of the stages and the per-stage CPU timings (for `bench/`). Each stage is a
plain function in `gateway/stages/`; only `persist` writes. Raising from here means "this
attempt failed"; the worker decides between retry, quarantine and defer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from gateway.blobs import BlobStore
from gateway.faults import crash_point
from gateway.runtime import Runtime
from gateway.spool import Envelope
from gateway.stages.automated import check_automated
from gateway.stages.classify import classify
from gateway.stages.decide import decide
from gateway.stages.identify import identify
from gateway.stages.parse import parse
from gateway.stages.persist import Persisted, persist
from gateway.stages.thread import thread
from gateway.storage.queries import SessionThreadLookup


class StageError(Exception):
    """A stage raised; carries which one, for the quarantine record."""

    def __init__(self, stage: str, error: BaseException) -> None:
        self.stage = stage
        self.error = error
        super().__init__(f"{stage}: {type(error).__name__}: {error}")


@dataclass
class Timings:
    """Accumulated CPU-ish wall time per stage, in seconds (single-threaded worker)."""

    totals: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, stage: str, seconds: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds


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
    now = now or datetime.now(UTC)
    settings = runtime.settings
    stage = "parse"
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t, stage
        if timings is not None:
            t2 = time.perf_counter()
            timings.add(stage, t2 - t)
            t = t2
        stage = name

    try:
        message = parse(raw, envelope, spool_id, settings.gateway.limits.max_attachment_bytes)
        lap("identify")
        customer = identify(message, runtime.directory)
        lap("automated")
        automated = check_automated(
            message,
            own_domain=settings.gateway.gateway.mail_domain,
            trust_spam_headers=settings.gateway.automated.trust_spam_headers,
        )
        lap("thread")
        with sessions() as session:
            threaded = thread(
                message, customer, SessionThreadLookup(session), now, runtime.reopen_window
            )
        lap("classify")
        verdict = classify(message, customer, runtime.engine, settings.severity.default)
        lap("decide")
        decision = decide(message, customer, verdict, threaded, automated, now, runtime.policy)
        lap("persist")
        crash_point("after-ack-before-persist")
        result = persist(
            sessions,
            blobs,
            raw,
            message,
            customer,
            automated,
            threaded,
            verdict,
            decision,
            runtime.persist,
            now,
        )
        lap("done")
    except StageError:
        raise
    except Exception as exc:
        raise StageError(stage, exc) from exc
    if timings is not None:
        timings.count += 1
    return result
