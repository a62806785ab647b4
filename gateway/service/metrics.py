"""Prometheus metrics, gathered at scrape time from what the gateway already records.

Owns the metric names and how each is derived: intake per channel and outcome and verdicts per
level from the database (cluster-wide truth, several instances included), spool depth and the
oldest entry's age from the spool, listener and worker counters from the status files, stage
cost from the workers' accumulated timings, outbox backlog and dead letters, webhook deliveries
by status (forwarding's dead letters among them), SLA breaches, parse defects by kind (issue 19),
and per IMAP mailbox the time since its last successful fetch. Computing at scrape time means no
shared-memory counters across worker processes and nothing to lose on restart. Never writes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gateway import clock as business_clock
from gateway.intake.spool import Spool
from gateway.message import decode_parse_defects
from gateway.outbound import forwarding_sender
from gateway.pipeline import BUCKETS
from gateway.storage.models import Intake, Message, OutboxRow, Ticket
from gateway.storage.queries import OPEN_STATUSES

# How far below the highest message id a commit may still land: a batch transaction holds ids
# it took before others' later batches committed (several workers or instances).
_LATE_COMMIT_IDS = 1000


class GatewayCollector(Collector):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        spool: Spool,
        status_dir: Path,
        channel_stats: Callable[[], Mapping[str, Mapping[str, object]]],
    ) -> None:
        self.sessions = sessions
        self.spool = spool
        self.status_dir = status_dir
        self.channel_stats = channel_stats  # live, from the daemon's own listeners
        # Parse defects are counted from the stored messages, each once: a scrape reads only
        # the ids above the highest seen less a margin (another worker's transaction may commit
        # a lower id after a higher one), and a purge or an erasure never makes the counter go
        # down.
        self._defects_lock = threading.Lock()
        self._defects_top_id = 0
        self._defects_recent: set[int] = set()  # ids counted within the margin
        self._defect_kinds: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._spool()
        yield from self._status_files()
        try:
            yield from self._database()
            yield from self._forwarding()
            up = 1.0
        except Exception:  # the database is down: intake goes on, and this metric says so
            up = 0.0
        g = GaugeMetricFamily("gateway_database_up", "Whether the ticket database answered.")
        g.add_metric([], up)
        yield g

    def _spool(self) -> Iterator[Metric]:
        pending = self.spool.pending()
        depth = GaugeMetricFamily("gateway_spool_depth", "Messages in the spool, not yet ticketed.")
        depth.add_metric([], len(pending))
        yield depth
        age = GaugeMetricFamily("gateway_spool_oldest_age_seconds", "Age of the oldest entry.")
        oldest = min((e.envelope.received_at for e in pending), default=None)
        age.add_metric([], (business_clock.now() - oldest).total_seconds() if oldest else 0.0)
        yield age
        q = GaugeMetricFamily("gateway_quarantine_size", "Messages quarantined after failures.")
        q.add_metric([], self.spool.quarantine_count())
        yield q

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        except (OSError, ValueError):
            return None

    def _status_files(self) -> Iterator[Metric]:
        accepted = CounterMetricFamily(
            "gateway_channel_accepted",
            "Messages a channel acknowledged since start.",
            labels=["channel"],
        )
        temp = CounterMetricFamily(
            "gateway_channel_temp_failures",
            "Temporary failures answered (4xx/503).",
            labels=["channel"],
        )
        since = GaugeMetricFamily(
            "gateway_imap_seconds_since_last_fetch",
            "Seconds since a mailbox was last fetched successfully.",
            labels=["mailbox"],
        )
        for name, stats in self.channel_stats().items():
            accepted.add_metric([name], _number(stats.get("accepted")))
            temp.add_metric([name], _number(stats.get("temp_failures")))
            last = stats.get("last_fetch_at")
            if name.startswith("imap:") and isinstance(last, int | float):
                since.add_metric([name[5:]], max(0.0, business_clock.wall_seconds() - float(last)))
        yield accepted
        yield temp
        yield since
        stage = CounterMetricFamily(
            "gateway_stage_seconds", "Worker time spent per pipeline stage.", labels=["stage"]
        )
        processed = CounterMetricFamily(
            "gateway_worker_processed", "Messages processed by worker.", labels=["worker"]
        )
        lag = GaugeMetricFamily(
            "gateway_worker_lag_seconds",
            "Age of the last message when it was taken.",
            labels=["worker"],
        )
        totals: dict[str, float] = {}
        buckets: dict[str, list[int]] = {}
        for path in sorted(self.status_dir.glob("worker-*.json")):
            data = self._read(path) or {}
            index = str(data.get("index", path.stem))
            processed.add_metric([index], float(data.get("processed", 0)))
            lag.add_metric([index], float(data.get("lag_seconds", 0.0)))
            for name, seconds in (data.get("stage_seconds") or {}).items():
                totals[name] = totals.get(name, 0.0) + float(seconds)
            for name, counts in (data.get("stage_buckets") or {}).items():
                merged = buckets.setdefault(name, [0] * (len(BUCKETS) + 1))
                for i, n in enumerate(counts[: len(merged)]):
                    merged[i] += int(n)
        for name, seconds in sorted(totals.items()):
            stage.add_metric([name], seconds)
        yield stage
        latency = HistogramMetricFamily(
            "gateway_stage_latency_seconds", "Latency of each pipeline stage.", labels=["stage"]
        )
        for name, counts in sorted(buckets.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            latency.add_metric([name], cumulative, sum_value=totals.get(name, 0.0))
        yield latency
        yield processed
        yield lag

    def _database(self) -> Iterator[Metric]:
        now = business_clock.now()
        with self.sessions() as session:
            intake = CounterMetricFamily(
                "gateway_intake",
                "Messages processed, by channel and outcome.",
                labels=["channel", "outcome"],
            )
            for channel, outcome, n in session.execute(
                select(Intake.channel, Intake.outcome, func.count()).group_by(
                    Intake.channel, Intake.outcome
                )
            ):
                intake.add_metric([channel, outcome], float(n))
            # What parsing lost or altered, by kind (issue 19; gateway/message.py lists the
            # kinds). Read from the stored messages, so every worker and instance counts.
            parse_defects = CounterMetricFamily(
                "gateway_parse_defects",
                "Parse defects that lost or altered content, by kind (the raw message is kept).",
                labels=["kind"],
            )
            for kind, n in sorted(self._count_parse_defects(session).items()):
                parse_defects.add_metric([kind], float(n))
            open_tickets = GaugeMetricFamily(
                "gateway_open_tickets", "Open tickets by severity.", labels=["severity"]
            )
            for severity, n in session.execute(
                select(Ticket.severity, func.count())
                .where(Ticket.status.in_(OPEN_STATUSES))
                .group_by(Ticket.severity)
            ):
                open_tickets.add_metric([severity], float(n))
            verdicts = CounterMetricFamily(
                "gateway_tickets", "Tickets created, by severity.", labels=["severity"]
            )
            for severity, n in session.execute(
                select(Ticket.severity, func.count()).group_by(Ticket.severity)
            ):
                verdicts.add_metric([severity], float(n))
            outbox = GaugeMetricFamily(
                "gateway_outbox",
                "Outbox rows by status (failed = dead letters).",
                labels=["status"],
            )
            for status, n in session.execute(
                select(OutboxRow.status, func.count()).group_by(OutboxRow.status)
            ):
                outbox.add_metric([status], float(n))
            breached = GaugeMetricFamily(
                "gateway_sla_breached", "Open tickets past a due time.", labels=["target"]
            )
            breached.add_metric(
                ["first_response"],
                float(
                    session.execute(
                        select(func.count())
                        .select_from(Ticket)
                        .where(
                            Ticket.status.in_(OPEN_STATUSES),
                            Ticket.first_response_at.is_(None),
                            Ticket.first_response_due < now,
                        )
                    ).scalar_one()
                ),
            )
            breached.add_metric(
                ["resolution"],
                float(
                    session.execute(
                        select(func.count())
                        .select_from(Ticket)
                        .where(Ticket.status.in_(OPEN_STATUSES), Ticket.resolution_due < now)
                    ).scalar_one()
                ),
            )
        yield intake
        yield parse_defects
        yield open_tickets
        yield verdicts
        yield outbox
        yield breached

    def _count_parse_defects(self, session: Session) -> dict[str, int]:
        """Defect kinds of every inbound message stored since the last scrape, added to what
        earlier scrapes counted (the first scrape of a process reads them all)."""
        with self._defects_lock:
            rows = session.execute(
                select(Message.id, Message.defects).where(
                    Message.id > self._defects_top_id - _LATE_COMMIT_IDS,
                    Message.direction == "in",
                    Message.defects != "",
                )
            )
            for message_id, column in rows:
                if message_id in self._defects_recent:
                    continue
                self._defects_recent.add(message_id)
                self._defects_top_id = max(self._defects_top_id, message_id)
                for defect in decode_parse_defects(column):
                    self._defect_kinds[defect.kind] = self._defect_kinds.get(defect.kind, 0) + 1
            floor = self._defects_top_id - _LATE_COMMIT_IDS
            self._defects_recent = {i for i in self._defects_recent if i > floor}
            return dict(self._defect_kinds)

    def _forwarding(self) -> Iterator[Metric]:
        """Webhook deliveries (gateway/outbound/forwarding_sender.py): backlog, delivered, dead
        letters."""
        with self.sessions() as session:
            counts = forwarding_sender.delivery_counts(session)
            journal = forwarding_sender.pending_changes(session)
        deliveries = GaugeMetricFamily(
            "gateway_forward_deliveries",
            "Webhook deliveries by webhook and status (pending, sending, delivered, dead).",
            labels=["webhook", "status"],
        )
        dead = GaugeMetricFamily(
            "gateway_forward_dead_letters",
            "Webhook deliveries given up after max_attempts, awaiting an admin's retry.",
            labels=["webhook"],
        )
        for webhook, status, n in counts:
            deliveries.add_metric([webhook, status], float(n))
            if status == forwarding_sender.DEAD:
                dead.add_metric([webhook], float(n))
        changes = GaugeMetricFamily(
            "gateway_forward_pending_changes",
            "Ticket changes not yet turned into deliveries (grows while worker 0 is down).",
        )
        changes.add_metric([], float(journal))
        yield deliveries
        yield dead
        yield changes


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
