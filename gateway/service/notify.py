"""systemd's notify protocol (sd_notify(3)) without a dependency: one datagram per state change.

Owns READY/RELOADING/STOPPING/STATUS/WATCHDOG messages to `$NOTIFY_SOCKET` (a path, or an
abstract socket when it starts with "@"). A no-op without `$NOTIFY_SOCKET`, so the daemon runs the
same under systemd, in a terminal and in tests. Never decides *whether* the daemon is healthy:
the daemon calls `watchdog()` only when it is.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        if self._sock is None:
            return
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]  # abstract namespace
        try:
            self._sock.sendto("\n".join(lines).encode(), target)
        except OSError as exc:  # systemd gone or socket full: never take the daemon down
            log.warning("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading config")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: finishing in-flight work")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between pings: half of `$WATCHDOG_USEC` (sd_watchdog_enabled(3)), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 1_000_000 / 2)
    except ValueError:
        return None
