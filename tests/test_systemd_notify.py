"""sd_notify over a real datagram socket, as systemd's Type=notify with WatchdogSec= sees it:
READY only once listening, watchdog pings while healthy (idle included), none while a worker is
wedged, RELOADING/READY around a reload, STOPPING at shutdown."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, wait_for


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[str]:
        return [line for _, m in self.messages for line in m.splitlines()]

    def pings_since(self, since: float) -> int:
        return sum(1 for t, m in self.messages if t >= since and "WATCHDOG=1" in m)

    def close(self) -> None:
        self.running = False
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()


def test_the_daemon_speaks_sd_notify_and_stops_pinging_when_a_worker_is_wedged(
    make_config: Callable[..., Path], notify: NotifySocket
) -> None:
    config = make_config(workers__stuck_seconds=3.0)
    daemon = DaemonProcess(
        config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    ).start()
    try:
        wait_for(lambda: "READY=1" in notify.lines())
        ready = next(m for _, m in notify.messages if "READY=1" in m)
        assert "STATUS=listening: smtp 127.0.0.1:" in ready
        # An idle daemon keeps pinging.
        start = time.monotonic()
        time.sleep(1.5)
        assert notify.pings_since(start) >= 3
        # Reload: RELOADING=1, then READY=1 again.
        daemon.sighup()
        wait_for(lambda: notify.lines().count("READY=1") >= 2)
        assert "RELOADING=1" in notify.lines()
        assert notify.lines().index("RELOADING=1") < len(notify.lines()) - 1
        # A wedged worker (stopped dead): after stuck_seconds the pings stop.
        (worker_pid,) = daemon.status()["workers"]
        os.kill(worker_pid, signal.SIGSTOP)
        try:
            time.sleep(4.5)
            quiet_from = time.monotonic()
            time.sleep(1.5)
            assert notify.pings_since(quiet_from) == 0
        finally:
            os.kill(worker_pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: notify.pings_since(resumed) >= 2, timeout=10)
    finally:
        daemon.stop()
    assert "STOPPING=1" in notify.lines()
