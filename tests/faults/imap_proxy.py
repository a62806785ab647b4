"""A TCP proxy between the gateway's IMAP poller and Dovecot that kill -9s Dovecot at an exact
moment of the IMAP conversation: halfway through the response to a ``FETCH ... BODY.PEEK[]``
(some of the bodies forwarded, the rest never sent), or when the poller sends ``MOVE`` (the
batch is spooled; the server is never told).

Owns only the timing of the kill; the bytes it forwards are never changed. Without a trigger
pending it is a plain pipe. The poller connects to the proxy's port; the test talks to Dovecot
directly.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tests.helpers import free_port

_COMMAND = re.compile(rb"^(\S+) (?:UID )?(\S+)(.*)$", re.I)


@dataclass(frozen=True)
class Trigger:
    kind: str  # "fetch": after `after_bytes` of a BODY[] response; "move": at the MOVE command
    after_bytes: int = 0

    def describe(self) -> str:
        if self.kind == "fetch":
            return f"mid-FETCH (after {self.after_bytes} bytes of the bodies)"
        return "at MOVE (batch spooled, server not told)"


class _Conversation:
    """What one client connection is doing: the command in flight and its response size."""

    def __init__(self) -> None:
        self.tag = b""
        self.fetching_bodies = False
        self.response_bytes = 0
        self.tail = b""  # the end of the server stream, to find the tagged completion


class KillingProxy:
    def __init__(self, upstream_port: int, kill: Callable[[], None]) -> None:
        self.upstream_port = upstream_port
        self.kill = kill
        self.port = free_port()
        self.triggers: deque[Trigger] = deque()
        self.fired: list[str] = []
        self.killed = threading.Event()  # set at each kill; the test clears it and relaunches
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, name="imap-proxy", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self._drop_all()

    # -- plumbing -------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the server is down: as if the connection were refused
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            talk = _Conversation()
            for source, sink, direction in ((client, upstream, "c2s"), (upstream, client, "s2c")):
                threading.Thread(
                    target=self._pump, args=(source, sink, direction, talk), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, direction: str, talk: _Conversation
    ) -> None:
        try:
            while data := source.recv(65536):
                if direction == "c2s":
                    forward, fire = self._client_data(data, talk)
                else:
                    forward, fire = self._server_data(data, talk)
                if forward:
                    sink.sendall(forward)
                if fire is not None:
                    self._fire(fire)
                    break
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _fire(self, trigger: Trigger) -> None:
        self.fired.append(trigger.describe())
        self.kill()
        self.killed.set()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for s in doomed:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    # -- the conversation -----------------------------------------------------------------------

    def _client_data(self, data: bytes, talk: _Conversation) -> tuple[bytes, Trigger | None]:
        for line in data.split(b"\r\n"):
            match = _COMMAND.match(line)
            if not match:
                continue
            tag, verb, rest = match.groups()
            if verb.upper() == b"MOVE":
                with self._lock:
                    pending = self.triggers[0] if self.triggers else None
                    if pending is not None and pending.kind == "move":
                        self.triggers.popleft()
                        return b"", pending  # the MOVE never reaches the server
            talk.tag = tag
            talk.fetching_bodies = verb.upper() == b"FETCH" and b"BODY.PEEK[]" in rest.upper()
            talk.response_bytes = 0
            talk.tail = b""
        return data, None

    def _server_data(self, data: bytes, talk: _Conversation) -> tuple[bytes, Trigger | None]:
        if not talk.fetching_bodies:
            return data, None
        before = talk.response_bytes
        talk.response_bytes += len(data)
        stream = talk.tail + data
        talk.tail = stream[-256:]
        if b"\r\n" + talk.tag + b" " in stream:
            talk.fetching_bodies = False  # the tagged completion: the response is over
            return data, None
        with self._lock:
            pending = self.triggers[0] if self.triggers else None
            if pending is None or pending.kind != "fetch":
                return data, None
            if talk.response_bytes < pending.after_bytes:
                return data, None
            self.triggers.popleft()
        # Part of the bodies reach the poller; the rest never will.
        return data[: max(0, pending.after_bytes - before)], pending
