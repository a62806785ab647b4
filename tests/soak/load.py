"""The soak engine, shared by tests/soak/test_soak.py (2 minutes, asserted) and bench/soak.py
(30 minutes by default, printed): steady mixed load against a real daemon, sampled over time.

Load: SMTP (one message per session, as MTAs mostly deliver), `gateway ingest` processes (the
MTA pipe: one process per message) and signed Twilio SMS webhooks, each from its own thread at a
fixed rate with unique content. Every `interval` seconds a sample records the daemon's and its
workers' RSS and open file descriptors (from /proc), the spool depth (from the daemon's status
file), the acceptance latency of what was accepted in that window, and the ticketed count.

"Flat" (`flatness`) is judged robustly on the samples after a warm-up: the median of the last
third may exceed the median of the first third by at most a factor plus an absolute margin, and
the least-squares trend over the whole run, extrapolated over the run, must stay under the same
margin — a slow leak fails the trend, a step after warm-up fails the thirds, and one noisy
sample fails neither. Spool depth must also stay under a bound: the worker keeps up.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import smtplib
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twilio.request_validator import RequestValidator

from tests.helpers import DaemonProcess, make_email, wait_for

TOKEN = "soak-auth-token-0123456789"
PUBLIC = "https://gw.example.test"
PHONES = ("+16175550100", "+16175550101", "+16175550155", "+16175550177")
SENDERS = (
    "dana@acme-clinic.example",
    "frontdesk@acme-clinic.example",
    "sam@bluebird.example",
    "stranger@unknown.example",
)
SUBJECTS = (
    "Printer offline",
    "Cannot log in to the portal",
    "Invoice question",
    "Network is down at the front desk",
    "Scanner jams",
)


@dataclass(frozen=True)
class Rates:
    """Messages per second for each channel."""

    smtp: float = 4.0
    pipe: float = 0.2
    sms: float = 2.0


@dataclass
class Counters:
    """What the load threads did: sent, accepted and latencies (seconds) since the last sample."""

    sent: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    window: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, channel: str, ok: bool, seconds: float) -> None:
        with self.lock:
            self.sent[channel] = self.sent.get(channel, 0) + 1
            if ok:
                self.accepted[channel] = self.accepted.get(channel, 0) + 1
                self.window.setdefault(channel, []).append(seconds)
            else:
                self.refused[channel] = self.refused.get(channel, 0) + 1

    def take_window(self) -> dict[str, list[float]]:
        with self.lock:
            window, self.window = self.window, {}
            return window


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started
    daemon_rss_kib: int
    workers_rss_kib: int
    daemon_fds: int
    workers_fds: int
    spool_depth: int
    ticketed: int  # intakes recorded so far
    smtp_p50_ms: float | None
    sms_p50_ms: float | None
    pipe_p50_ms: float | None


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def intakes(daemon: DaemonProcess) -> int:
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{daemon.state / 'gateway.db'}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM intakes").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _median_ms(values: list[float] | None) -> float | None:
    return round(statistics.median(values) * 1000, 1) if values else None


class Soak:
    """Drives the load against a started daemon and samples it."""

    def __init__(self, daemon: DaemonProcess, rates: Rates, interval: float = 5.0) -> None:
        self.daemon = daemon
        self.rates = rates
        self.interval = interval
        self.counters = Counters()
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.serial = itertools.count()
        self.started = 0.0
        self.errors: list[str] = []

    # -- the three channels -----------------------------------------------------------------

    def _message(self, n: int) -> bytes:
        return make_email(
            subject=f"{SUBJECTS[n % len(SUBJECTS)]} #{n}",
            body=f"Soak message {n}. " + "The details follow. " * (n % 40),
            sender=SENDERS[n % len(SENDERS)],
            message_id=f"<soak-{n}-{os.getpid()}@soak.example>",
        ).replace(b"\n", b"\r\n")

    def send_smtp(self) -> bool:
        n = next(self.serial)
        with smtplib.SMTP("127.0.0.1", self.daemon.smtp_port, timeout=60) as client:
            refused = client.sendmail(
                SENDERS[n % len(SENDERS)], ["support@example.com"], self._message(n)
            )
        return not refused

    def send_pipe(self) -> bool:
        n = next(self.serial)
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.daemon.config), "ingest"],
            input=self._message(n),
            capture_output=True,
            timeout=120,
        )
        if result.returncode != 0:
            self.errors.append(f"ingest exit {result.returncode}: {result.stderr[-300:]!r}")
        return result.returncode == 0

    def send_sms(self) -> bool:
        n = next(self.serial)
        params = {
            "MessageSid": f"SMsoak{os.getpid()}x{n:020d}",
            "AccountSid": "AC" + "0" * 32,
            "From": PHONES[n % len(PHONES)],
            "To": "+16175550199",
            "Body": ("NEW " if n % 3 == 0 else "") + f"{SUBJECTS[n % len(SUBJECTS)]} ({n})",
            "NumMedia": "0",
        }
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/sms", params)
        host, port = self.daemon.status()["listeners"]["webhooks"].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request(
                "POST",
                "/twilio/sms",
                body=urllib.parse.urlencode(params),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": signature,
                },
            )
            response = conn.getresponse()
            response.read()
            return response.status == 200
        finally:
            conn.close()

    def _producer(self, channel: str, rate: float, send: Callable[[], bool]) -> None:
        if rate <= 0:
            return
        period = 1.0 / rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                ok = send()
            except (OSError, smtplib.SMTPException, subprocess.TimeoutExpired) as exc:
                self.errors.append(f"{channel}: {type(exc).__name__}: {exc}")
                ok = False
            self.counters.record(channel, ok, time.monotonic() - t0)
            next_at += period
            # A steady schedule: never burst to catch up after a slow send.
            next_at = max(next_at, time.monotonic())
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    # -- sampling ---------------------------------------------------------------------------

    def sample(self) -> Sample:
        status = self.daemon.status()
        assert self.daemon.proc is not None
        pid = self.daemon.proc.pid
        workers = [int(w) for w in status.get("workers", [])]
        window = self.counters.take_window()
        return Sample(
            t=round(time.monotonic() - self.started, 1),
            daemon_rss_kib=proc_rss_kib(pid),
            workers_rss_kib=sum(proc_rss_kib(w) for w in workers),
            daemon_fds=proc_fds(pid),
            workers_fds=sum(proc_fds(w) for w in workers),
            spool_depth=int(status.get("spool_depth", 0)),
            ticketed=intakes(self.daemon),
            smtp_p50_ms=_median_ms(window.get("smtp")),
            sms_p50_ms=_median_ms(window.get("sms")),
            pipe_p50_ms=_median_ms(window.get("pipe")),
        )

    def run(self, duration: float, on_sample: Callable[[Sample], None] | None = None) -> None:
        threads = [
            threading.Thread(target=self._producer, args=(name, rate, send), daemon=True)
            for name, rate, send in (
                ("smtp", self.rates.smtp, self.send_smtp),
                ("pipe", self.rates.pipe, self.send_pipe),
                ("sms", self.rates.sms, self.send_sms),
            )
        ]
        self.started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            next_sample = self.started + self.interval
            while time.monotonic() - self.started < duration:
                time.sleep(max(0.0, next_sample - time.monotonic()))
                next_sample += self.interval
                sample = self.sample()
                self.samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=180)

    def drain(self, timeout: float = 300) -> int:
        """Wait until everything accepted has an intake row; return the intake count."""
        accepted = sum(self.counters.accepted.values())
        wait_for(lambda: intakes(self.daemon) >= accepted, timeout=timeout, interval=0.5)
        return intakes(self.daemon)


# -- judging and printing -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    series: str
    first: float
    last: float
    trend: float  # least-squares slope extrapolated over the judged span
    limit: float  # how much growth is allowed
    flat: bool


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def flatness(
    samples: list[Sample], series: str, factor: float, margin: float, warmup: float = 0.15
) -> Verdict:
    """Is `series` flat after the first `warmup` fraction of the run? (see module docstring)"""
    points = [(s.t, getattr(s, series)) for s in samples]
    points = [(t, float(v)) for t, v in points if v is not None]
    points = points[int(len(points) * warmup) :]
    assert len(points) >= 6, f"too few samples of {series} to judge"
    third = len(points) // 3
    first = statistics.median(v for _, v in points[:third])
    last = statistics.median(v for _, v in points[-third:])
    span = points[-1][0] - points[0][0]
    trend = slope([t for t, _ in points], [v for _, v in points]) * span
    limit = first * (factor - 1) + margin
    flat = last <= first * factor + margin and trend <= limit
    return Verdict(series, first, last, trend, limit, flat)


COLUMNS = (
    ("t", "t s", 7),
    ("daemon_rss_kib", "daemon RSS KiB", 15),
    ("workers_rss_kib", "workers RSS KiB", 16),
    ("daemon_fds", "d fds", 6),
    ("workers_fds", "w fds", 6),
    ("spool_depth", "spool", 6),
    ("ticketed", "intakes", 8),
    ("smtp_p50_ms", "smtp p50 ms", 12),
    ("sms_p50_ms", "sms p50 ms", 11),
    ("pipe_p50_ms", "pipe p50 ms", 12),
)


def header() -> str:
    return "".join(f"{title:>{width}}" for _, title, width in COLUMNS)


def row(sample: Sample) -> str:
    cells = []
    for name, _, width in COLUMNS:
        value = getattr(sample, name)
        cells.append(f"{'-' if value is None else value:>{width}}")
    return "".join(cells)


def summary(soak: Soak, verdicts: list[Verdict]) -> str:
    c = soak.counters
    lines = [
        "sent "
        + json.dumps(c.sent, sort_keys=True)
        + "  accepted "
        + json.dumps(c.accepted, sort_keys=True)
        + "  refused "
        + json.dumps(c.refused, sort_keys=True),
    ]
    for v in verdicts:
        lines.append(
            f"{v.series:16} first-third median {v.first:10.1f}  last-third median {v.last:10.1f}"
            f"  trend {v.trend:+9.1f} (limit {v.limit:.1f})  {'flat' if v.flat else 'GROWING'}"
        )
    return "\n".join(lines)


def judge(samples: list[Sample]) -> list[Verdict]:
    """The flatness rules both the test and the bench apply."""
    return [
        # Memory: within 25 % + 24 MiB of where it settled (CPython's allocator keeps arenas).
        flatness(samples, "daemon_rss_kib", 1.25, 24 * 1024),
        flatness(samples, "workers_rss_kib", 1.25, 24 * 1024),
        # Descriptors: a leak grows without bound; sessions in flight come and go.
        flatness(samples, "daemon_fds", 1.0, 12),
        flatness(samples, "workers_fds", 1.0, 8),
        # Latency: the median may not drift upward (3x + 100 ms absorbs a noisy machine).
        flatness(samples, "smtp_p50_ms", 3.0, 100),
        flatness(samples, "sms_p50_ms", 3.0, 100),
    ]
