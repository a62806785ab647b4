"""`gateway run`: the long-running service — listeners in one event loop, workers in processes.

Owns start-up order (DESIGN promise 1 and "validated before any port opens"): config validated
-> state directory locked (one daemon per spool) -> claimed spool entries recovered -> workers
started -> listeners bound -> ready. Owns signals: SIGHUP reloads (here and in every worker; a
bad config keeps the old one; changed `[[imap]]` mailboxes are restarted with their new table),
SIGTERM/SIGINT stop gracefully within `STOP_BOUND_SECONDS` (below systemd's TimeoutStopSec=60):
the SMTP socket closes first, transactions in progress finish and everything else gets 421;
webhooks and /readyz answer 503; IMAP pollers log out; workers finish (or release) the batch in
hand; exit 0. Never processes messages itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from starlette.applications import Starlette

from channels.imap import MailboxChanges, PollerThread, mailbox_changes, start_poller
from channels.smtp import Acceptance, IntakeHandler, ListenerConfig, start_listener
from channels.twilio import TwilioChannel, build_app, start_webhooks
from gateway import clock as business_clock
from gateway.api.app import build_api_app
from gateway.api.context import ApiContext
from gateway.config.loader import Settings
from gateway.config.schema import ImapMailbox
from gateway.intake.blobs import BlobStore
from gateway.intake.spool import Spool
from gateway.outbound.twilio_sender import auth_token as twilio_auth_token
from gateway.service.health import health_endpoints
from gateway.service.http_server import HttpServer, RefuseWhileStopping, serve_http
from gateway.service.metrics import GatewayCollector
from gateway.service.notify import Notifier, watchdog_interval
from gateway.service.runtime import RuntimeBox
from gateway.storage.channel_state import ChannelStateStore, open_store
from gateway.storage.db import make_engine, session_factory

log = logging.getLogger(__name__)

# Graceful stop budget (systemd's TimeoutStopSec is 60 s; KillMode=mixed SIGKILLs after it).
SMTP_DRAIN_SECONDS = 10.0  # transactions in progress may finish; then 421 and close
STOP_BOUND_SECONDS = 50.0  # everything, including workers finishing their batch


class AlreadyRunningError(Exception):
    pass


def lock_state_dir(state_dir: Path) -> IO[str]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fh = open(state_dir / "daemon.lock", "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.close()
        raise AlreadyRunningError(f"another gateway is running on {state_dir}") from exc
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def acceptance(box: RuntimeBox) -> Acceptance:
    smtp = box.current.settings.gateway.smtp
    return Acceptance(
        recipients=frozenset(r.lower() for r in smtp.recipients),
        domains=frozenset(d.lower() for d in smtp.domains),
    )


class Daemon:
    def __init__(self, config_dir: Path, box: RuntimeBox) -> None:
        self.config_dir = config_dir
        self.box = box
        settings = box.current.settings
        self.state_dir = settings.state_dir
        self.status_dir = self.state_dir / "status"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.stop_event = asyncio.Event()
        self.spool: Spool | None = None
        self.handler: IntakeHandler | None = None
        self.listeners: dict[str, str] = {}
        self.notifier = Notifier()
        self.worker_started: list[float] = []
        self._wedged_logged = False
        # IMAP: one thread per mailbox, each with its own stop event (a reload may end one).
        self.imap_threads: list[PollerThread] = []
        self.imap_store: ChannelStateStore | None = None
        self._imap_reloads = asyncio.Lock()  # reloads' mailbox changes apply one after another
        self._tasks: set[asyncio.Task[None]] = set()
        self.webhooks: HttpServer | None = None  # Twilio webhooks (channels/twilio.py)
        self.health: HttpServer | None = None  # /healthz /readyz /metrics on [api]
        self.twilio: TwilioChannel | None = None
        self._acceptance = acceptance(box)

    def _start_worker(self, index: int) -> subprocess.Popen[bytes]:
        while len(self.worker_started) <= index:
            self.worker_started.append(0.0)
        self.worker_started[index] = business_clock.wall_seconds()
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(self.config_dir),
            "worker",
            "--index",
            str(index),
        ]
        return subprocess.Popen(cmd)  # same process group: kill -9 of the group takes all

    async def run(self) -> int:
        settings = self.box.current.settings
        test_clock = business_clock.current()
        if test_clock.hooked:
            # A test hook (gateway/clock.py): every SLA, calendar and hold is computed from a
            # moved clock. Never in production; say so loudly where an operator will look.
            log.warning(
                "!!! %s is set: this daemon's clock reads %s, not the real time. "
                "It is a test-only hook; unset it in any real deployment. !!!",
                business_clock.HOOK_ENV,
                test_clock.now().isoformat(timespec="seconds"),
            )
        lock = lock_state_dir(self.state_dir)
        self.status_dir.mkdir(exist_ok=True)
        g = settings.gateway
        self.spool = Spool(
            settings.spool_dir,
            fsync=g.spool.fsync,
            high_water_bytes=g.spool.high_water_mib * 1024 * 1024,
            min_free_bytes=g.spool.min_free_mib * 1024 * 1024,
            max_attempts=g.spool.max_attempts,
        )
        recovered = self.spool.recover()
        if recovered:
            log.warning("recovered %d spool entries claimed before the last stop", recovered)
        for i in range(g.workers.processes):
            self.workers.append(self._start_worker(i))
        servers: list[asyncio.Server] = []
        if g.smtp.enabled:
            self.handler = IntakeHandler(
                self.spool,
                lambda: self._acceptance,
                channel="lmtp" if g.smtp.lmtp else "smtp",
                lmtp=g.smtp.lmtp,
            )
            server = await start_listener(
                self.handler,
                ListenerConfig(
                    host=g.smtp.host,
                    port=g.smtp.port,
                    lmtp=g.smtp.lmtp,
                    max_sessions=g.smtp.max_sessions,
                    timeout_seconds=g.smtp.timeout_seconds,
                    max_message_bytes=g.limits.max_message_bytes,
                    hostname=g.gateway.mail_domain,
                ),
            )
            servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            self.listeners["lmtp" if g.smtp.lmtp else "smtp"] = f"{host}:{port}"
            log.info("%s listening on %s:%s", "LMTP" if g.smtp.lmtp else "SMTP", host, port)
        # --- IMAP mailboxes (channels/imap.py): one polling thread each -------------------------
        for mailbox in settings.gateway.imap:
            self._start_mailbox(mailbox, settings)
        # --- end IMAP -----------------------------------------------------------------------------
        # --- Twilio webhooks (channels/twilio.py): uvicorn served in this loop --------------------
        if g.webhooks.enabled:
            runtime_box = self.box
            self.twilio = TwilioChannel(
                self.spool, lambda: runtime_box.current, twilio_auth_token()
            )
            twilio_app = build_app(self.twilio)
            twilio_app.add_middleware(RefuseWhileStopping, stopping=self.stop_event.is_set)
            self.webhooks = await start_webhooks(twilio_app, g.webhooks.host, g.webhooks.port)
            self.listeners["webhooks"] = f"{self.webhooks.host}:{self.webhooks.port}"
            log.info("Twilio webhooks listening on %s", self.listeners["webhooks"])
        # --- end Twilio ---------------------------------------------------------------------------
        if g.api.enabled:
            self.health = await serve_http(self._health_app(settings), g.api.host, g.api.port)
            self.listeners["api"] = f"{self.health.host}:{self.health.port}"
            log.info("API, health and metrics on http://%s", self.listeners["api"])
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        log.info("gateway ready (instance %s, %d worker(s))", g.gateway.instance, len(self.workers))
        # READY only now: config loaded, state locked, listeners bound (sd_notify(3)).
        self.notifier.ready(self._status_line())
        interval = min(1.0, watchdog_interval() or 1.0)
        try:
            while not self.stop_event.is_set():
                tick = loop.time()
                self._supervise()
                self._write_status()
                if self._healthy(lag=loop.time() - tick):
                    self.notifier.watchdog()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), timeout=interval)
        finally:
            await self._stop(servers)
            lock.close()
        return 0

    async def _stop(self, servers: list[asyncio.Server]) -> None:
        """Graceful stop, bounded by STOP_BOUND_SECONDS. Nothing acknowledged is at risk at any
        step: a message is acknowledged only once spooled, and the spool survives us."""
        assert self.spool is not None
        self.stop_event.set()  # webhooks and /readyz answer 503 from now on
        deadline = time.monotonic() + STOP_BOUND_SECONDS
        self.notifier.stopping()
        log.info("stopping: closing listeners, letting workers finish")
        for thread in self.imap_threads:  # IMAP: pollers leave IDLE within a second, log out
            thread.stop.set()
        for proc in self.workers:  # workers finish (or release) the batch in hand, then exit
            if proc.poll() is None:
                proc.terminate()
        for server in servers:
            server.close()  # no new SMTP connections (an MTA tries the next MX)
        if self.handler is not None:
            await self.handler.shut_down(SMTP_DRAIN_SECONDS)
        if self.webhooks is not None:  # Twilio: stop taking webhooks before workers stop
            await self.webhooks.stop()
        if self.health is not None:
            await self.health.stop()
        for thread in self.imap_threads:
            await asyncio.to_thread(thread.join, max(0.1, deadline - time.monotonic() - 10))
        for proc in self.workers:
            try:
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker %d did not stop in time: killed (its batch is recovered)", proc.pid
                )
                proc.kill()
        await asyncio.to_thread(self.spool.close)  # writes already submitted finish first
        self._write_status(stopped=True)
        log.info("stopped")

    def _health_app(self, settings: Settings) -> Starlette:
        """The [api] app: health and metrics (gateway/service/health.py) with the agents' API, the
        queue page and forwarding routes around them (gateway/api/app.py)."""
        assert self.spool is not None
        sessions = session_factory(make_engine(settings.database_url))
        collector = GatewayCollector(sessions, self.spool, self.status_dir, self.channel_stats)
        runtime_box = self.box
        app = build_api_app(
            ApiContext(
                sessions=sessions,
                write_sessions=session_factory(make_engine(settings.database_url, immediate=True)),
                spool=self.spool,
                blobs=BlobStore(settings.state_dir / "blobs", fsync=settings.gateway.spool.fsync),
                settings=lambda: runtime_box.current.settings,
            ),
            health_endpoints(
                sessions,
                self.spool,
                collector,
                lambda: dict(self.listeners),
                settings.gateway.spool.min_free_mib * 1024 * 1024,
            ),
        )
        # Stopping: not ready (a load balancer drains us); /healthz and /metrics still answer.
        app.add_middleware(RefuseWhileStopping, stopping=self.stop_event.is_set, paths=("/readyz",))
        return app

    def _start_mailbox(self, mailbox: ImapMailbox, settings: Settings) -> None:
        assert self.spool is not None
        if self.imap_store is None:
            self.imap_store = open_store(settings.database_url)
        thread = start_poller(mailbox, settings, self.spool, threading.Event(), self.imap_store)
        self.imap_threads.append(thread)
        self.listeners[f"imap:{mailbox.name}"] = (
            f"{mailbox.host}:{mailbox.port}/{mailbox.folder}"
        )

    async def _apply_mailbox_changes(self, changes: MailboxChanges) -> None:
        """A reload's `[[imap]]` changes, applied (issue 18 item 8: they were silently ignored).

        A changed or removed mailbox's poller is stopped and awaited first: it finishes the
        batch in hand (whatever it spooled is moved or flagged before it ends, DESIGN promise 1)
        and logs out. Only then does the new table's poller start, so this instance never polls
        one mailbox twice at once; its cursor is in channel_state, so it goes on where the old
        one stopped. Counters in `gateway status` start again from zero."""
        async with self._imap_reloads:
            for name in changes.removed:
                log.info("[[imap]] %s removed from gateway.toml: stopping its poller", name)
            for mailbox, keys in changes.changed:
                log.info(
                    "[[imap]] %s: %s changed in gateway.toml: applied now (the mailbox reconnects)",
                    mailbox.name,
                    ", ".join(keys),
                )
            ending = {*changes.removed, *(mailbox.name for mailbox, _ in changes.changed)}
            for thread in [t for t in self.imap_threads if t.poller.name in ending]:
                thread.stop.set()
                await asyncio.to_thread(thread.join)
                self.imap_threads.remove(thread)
                self.listeners.pop(thread.poller.channel, None)
            if self.stop_event.is_set():
                return
            settings = self.box.current.settings
            for mailbox in (*changes.added, *(mailbox for mailbox, _ in changes.changed)):
                if mailbox in settings.gateway.imap:  # a later reload may have changed it again
                    self._start_mailbox(mailbox, settings)
                    log.info("[[imap]] %s: polling with the reloaded table", mailbox.name)

    def _reload(self) -> None:
        self.notifier.reloading()
        mailboxes = self.box.current.settings.gateway.imap
        ok = self.box.reload()
        if ok:
            self._acceptance = acceptance(self.box)
            changes = mailbox_changes(mailboxes, self.box.current.settings.gateway.imap)
            if changes:
                task = asyncio.get_running_loop().create_task(self._apply_mailbox_changes(changes))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)
        self.notifier.ready(
            self._status_line() if ok else f"reload rejected: {self.box.last_error}"
        )

    def _status_line(self) -> str:
        listening = ", ".join(f"{k} {v}" for k, v in self.listeners.items())
        depth = self.spool.depth() if self.spool else 0
        return f"listening: {listening or 'nothing'}; spool depth {depth}"

    def _healthy(self, *, lag: float) -> bool:
        """Ping the watchdog only when the event loop answers promptly and no worker has been
        silent (stuck in one batch) longer than `workers.stuck_seconds`. An idle daemon is
        healthy: an idle worker still writes its heartbeat every second."""
        if lag > 5.0:
            log.error("event loop blocked for %.1fs: withholding the watchdog ping", lag)
            return False
        bound = self.box.current.settings.gateway.workers.stuck_seconds
        now = business_clock.wall_seconds()
        for i, started in enumerate(self.worker_started):
            if now - started < bound:
                continue  # a fresh worker gets the bound to write its first heartbeat
            path = self.status_dir / f"worker-{i}.json"
            try:
                beat = float(json.loads(path.read_text())["time"])
            except (OSError, ValueError, KeyError):
                beat = 0.0
            if now - max(beat, started) > bound:
                if not self._wedged_logged:
                    log.error(
                        "worker %d silent for %.0fs (> %.0fs): withholding the watchdog "
                        "ping so systemd restarts the service",
                        i,
                        now - beat,
                        bound,
                    )
                    self._wedged_logged = True
                return False
        self._wedged_logged = False
        return True

    def _supervise(self) -> None:
        for i, proc in enumerate(self.workers):
            code = proc.poll()
            if code is not None and not self.stop_event.is_set():
                log.error("worker %d exited with %s; restarting it", i, code)
                self.workers[i] = self._start_worker(i)

    def channel_stats(self) -> dict[str, dict[str, object]]:
        """Each channel's live counters: what `gateway status` and /metrics show."""
        channels: dict[str, dict[str, object]] = {}
        if self.handler is not None:
            stats = self.handler.stats
            channels[self.handler.channel] = {
                "accepted": stats.accepted,
                "refused_recipients": stats.refused_recipients,
                "temp_failures": stats.temp_failures,
                "sessions": stats.sessions,
                "last_error": stats.last_error,
            }
        # IMAP: each mailbox's own counters (MailboxStats) under channels["imap:<name>"].
        for thread in self.imap_threads:
            channels[thread.poller.channel] = thread.poller.stats.as_dict()
        if self.twilio is not None:  # Twilio: the webhooks' counters
            channels["webhooks"] = self.twilio.stats.as_dict()
        return channels

    def _write_status(self, *, stopped: bool = False) -> None:
        assert self.spool is not None
        data = {
            "pid": os.getpid(),
            "time": business_clock.wall_seconds(),
            "stopped": stopped,
            "listeners": self.listeners,
            "workers": [p.pid for p in self.workers],
            "config_generation": self.box.current.generation,
            "config_error": self.box.last_error,
            "spool_depth": self.spool.depth(),
            "quarantine": self.spool.quarantine_count(),
            "channels": self.channel_stats(),
        }
        path = self.status_dir / "daemon.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def run_daemon(config_dir: Path, box: RuntimeBox) -> int:
    return asyncio.run(Daemon(config_dir, box).run())
