"""Test helpers: config directories, a capturing SMTP relay, a real daemon process, waiting."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from gateway import clock

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"

# Named instants for tests whose outcome depends on the time (pass them to `pin_clock`). The
# sample config's business calendar is Monday-Friday 08:00-18:00 America/New_York.
BUSINESS_HOURS = "2026-12-15T15:00:00Z"  # Tuesday 10:00 in New York
AFTER_HOURS = "2026-12-12T08:00:00Z"  # Saturday 03:00 in New York
SUNDAY_MIDDAY = "2026-12-13T17:29:00Z"  # Sunday 12:29 in New York: closed, after hours
BEFORE_CLOSING = "2026-12-15T22:59:50Z"  # Tuesday 17:59:50 in New York: still open
AFTER_CLOSING = "2026-12-15T23:00:20Z"  # Tuesday 18:00:20 in New York: closed, after hours


# The lowest port `free_port` picks; below it sit the well-known services (PostgreSQL's 5432).
FIXED_PORTS_FROM = 10000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Used when the range file is missing (not Linux): below both Linux's default (32768-60999)
# and IANA's dynamic range (49152-65535).
ASSUMED_EPHEMERAL_RANGE = (32768, 65535)
_ports_handed_out: set[int] = set()
# SystemRandom, not the `random` module: hypothesis reseeds the global generator, and two xdist
# workers seeded alike would pick the same ports in the same order.
_port_chooser = random.SystemRandom()


def ports_outside_ephemeral_range(low: int, high: int) -> list[range]:
    """The port ranges `free_port` picks from when the kernel's ephemeral range is low..high."""
    below = range(FIXED_PORTS_FROM, low)
    above = range(max(high + 1, FIXED_PORTS_FROM), 65536)
    return [r for r in (below, above) if len(r) >= 1000]


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's ephemeral range (source ports for outgoing connections), inclusive."""
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return ASSUMED_EPHEMERAL_RANGE


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and that the kernel will not take back meanwhile.

    Callers bind the port later, sometimes seconds later, or bind it again after taking a
    proxy "down". A port from bind(0) lies in the kernel's ephemeral range, and once let go
    the kernel may give it to any outgoing connection as its source port, including the
    daemon's own retries against that very port while nothing listens there (TCP
    self-connect); the later bind then fails with EADDRINUSE. So the port is drawn at random
    from outside the ephemeral range, where the kernel never picks source ports, and
    checked: it must bind (without SO_REUSEADDR, so a port in TIME_WAIT is passed over too)
    and nothing may answer a connection to it. Random choice keeps xdist workers apart; a
    port is never handed out twice in one process (a caller may take two before binding
    either). Only if the ephemeral range leaves no room does it fall back to bind(0).
    """
    choices = ports_outside_ephemeral_range(*ephemeral_port_range())
    if not choices:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        # Each range weighted by its size: every candidate port equally likely.
        ports = _port_chooser.choices(choices, weights=[len(r) for r in choices])[0]
        port = _port_chooser.choice(ports)
        if port in _ports_handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            with socket.socket() as knock:
                knock.settimeout(1.0)
                if knock.connect_ex(("127.0.0.1", port)) == 0:
                    continue
        _ports_handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found in {choices} after 200 tries")


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def _set(text: str, section: str, key: str, value: object) -> str:
    """Set `key` in `[section]` of a TOML text (adds the key or section if missing)."""
    rendered = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
    if isinstance(value, list | tuple):
        rendered = json.dumps(list(value))
    header = f"[{section}]"
    if header not in text:
        return text + f"\n{header}\n{key} = {rendered}\n"
    start = text.index(header) + len(header)
    nxt = re.search(r"^\[", text[start:], re.M)
    end = start + nxt.start() if nxt else len(text)
    body = text[start:end]
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
    if pattern.search(body):
        body = pattern.sub(lambda _m: f"{key} = {rendered}", body, count=1)
    else:
        body = f"\n{key} = {rendered}" + body
    return text[:start] + body + text[end:]


def configure(source: Path, target: Path, state: Path, *, as_shipped: bool = False,
              **overrides: object) -> Path:
    """A config directory for a test: the sample config, state in `state`, port 0, no relay.

    Overrides are `section__key=value` for gateway.toml, e.g. `smtp__port=2525`.
    `as_shipped`: keep what the sample config sets for performance (benchmarks measure it);
    a test's daemon instead runs its workers at nice 0.
    """
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    text = (target / "gateway.toml").read_text()
    defaults: dict[str, object] = {
        "gateway__state_dir": str(state),
        "smtp__port": 0,
        "outbound__enabled": False,
        "api__port": 0,
        "webhooks__port": 0,
    }
    if not as_shipped:
        # The sample config runs workers at +10 so listeners come first; a test's daemon shares
        # the machine with the busy test runner itself, where a niced worker's start (imports,
        # the model) could take many times longer. tests/test_worker_priority.py tests nice.
        defaults["workers__nice"] = 0
    defaults.update(overrides)
    for name, value in defaults.items():
        section, key = name.split("__", 1)
        text = _set(text, section, key, value)
    (target / "gateway.toml").write_text(text)
    return target


def make_email(
    subject: str = "Printer offline",
    body: str = "Our label printer stopped working this morning.",
    sender: str = "dana@acme-clinic.example",
    to: str = "support@example.com",
    message_id: str | None = "<m1@acme-clinic.example>",
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 -0500"
    if message_id:
        msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


class CapturingRelay:
    """A real SMTP server (aiosmtpd over TCP) standing in for the outbound relay."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.recipients: list[list[str]] = []
        self.stopped = False

        relay = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                relay.messages.append(envelope.original_content or envelope.content)
                relay.recipients.append(list(envelope.rcpt_tos))
                return "250 OK"

        # aiosmtpd's Controller cannot bind port 0 (it connects to itself to check readiness).
        self._port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self._port)

    def start(self) -> None:
        self.controller.start()

    @property
    def port(self) -> int:
        return self._port

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.controller.stop()


class DaemonProcess:
    """`gateway run` as a real process in its own process group (so kill -9 takes the group)."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        # Readable log lines in the test's daemon.log (production picks JSON off a terminal).
        self.env = {"GATEWAY_LOG_FORMAT": "text", **os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "daemon.log"

    @property
    def state(self) -> Path:
        text = (self.config / "gateway.toml").read_text()
        m = re.search(r'^state_dir = "(.*)"', text, re.M)
        assert m
        return Path(m.group(1))

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        status = self.state / "status" / "daemon.json"
        if status.exists():
            status.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                cwd=self.config.parent,
            )
        wait_for(lambda: self._ready(status), timeout=timeout)
        return self

    def _ready(self, status: Path) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log.read_text()}")
        if not status.exists():
            return False
        try:
            data = json.loads(status.read_text())
        except ValueError:
            return False
        workers = list((self.state / "status").glob("worker-*.json"))
        return bool(data.get("listeners")) and bool(workers)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "status" / "daemon.json").read_text())
        return data

    def worker_status(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in (self.state / "status").glob("worker-*.json")]

    @property
    def smtp_port(self) -> int:
        return int(self.status()["listeners"]["smtp"].rsplit(":", 1)[1])

    def send(self, raw: bytes, to: str = "support@example.com", sender: str = "a@b.example") -> Any:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            return client.sendmail(sender, [to], raw)

    def sighup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Workers share the process group; make sure none outlives the test.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def gateway_cli(
    config: Path,
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=config.parent,
    )


class Gateway:
    """The gateway in-process: a spool to ingest into and a worker to drain it (no listeners)."""

    def __init__(self, config: Path) -> None:
        from gateway.service.runtime import RuntimeBox, load_runtime
        from gateway.service.worker import Worker
        from gateway.storage.db import upgrade

        runtime = load_runtime(config)
        self.settings = runtime.settings
        upgrade(self.settings.database_url)
        self.box = RuntimeBox(config, runtime)
        self.worker = Worker(self.box, run_outbox=False)
        self.spool = self.worker.spool

    def ingest(
        self,
        raw: bytes,
        channel: str = "smtp",
        mail_from: str | None = None,
        channel_key: str | None = None,
    ) -> str:

        from gateway.intake.spool import Envelope

        return self.spool.enqueue(
            raw,
            Envelope(
                channel=channel,
                received_at=clock.now(),
                mail_from=mail_from if mail_from is not None else "sender@example.net",
                recipients=("support@example.com",),
                channel_key=channel_key,
            ),
        )

    def drain(self) -> int:
        return self.worker.drain()

    def session(self) -> Any:
        return self.worker.sessions()

    def tickets(self) -> list[Any]:
        from sqlalchemy import select

        from gateway.storage.models import Ticket

        with self.session() as s:
            return list(s.execute(select(Ticket).order_by(Ticket.id)).scalars())

    def intakes(self) -> list[Any]:
        from sqlalchemy import select

        from gateway.storage.models import Intake

        with self.session() as s:
            return list(s.execute(select(Intake).order_by(Intake.id)).scalars())

    def outbox(self) -> list[Any]:
        from sqlalchemy import select

        from gateway.storage.models import OutboxRow

        with self.session() as s:
            return list(s.execute(select(OutboxRow).order_by(OutboxRow.id)).scalars())

    def close(self) -> None:
        self.spool.close()
        self.worker.engine.dispose()


def ticket_subjects(url: str) -> dict[str, int]:
    """Subject -> number of tickets, read straight from the database (empty before migration)."""
    from sqlalchemy import text

    from gateway.storage.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT subject, count(*) FROM tickets GROUP BY subject"))
            return {str(subject): int(n) for subject, n in rows}
    except Exception:
        return {}  # not migrated yet
    finally:
        engine.dispose()
