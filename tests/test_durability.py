"""Nothing acknowledged is lost, nothing is doubled — with real processes killed and a real
database taken away (DESIGN promise 1 and 2)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, gateway_cli, make_email, wait_for


def tickets(config: Path) -> list[dict[str, object]]:
    out = gateway_cli(config, "tickets", "--json", "--all")
    assert out.returncode == 0, out.stderr.decode()
    data: list[dict[str, object]] = json.loads(out.stdout)
    return data


def test_kill_9_after_250_but_before_persist_leaves_exactly_one_ticket_after_restart(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    # The worker kills the whole daemon (kill -9 of the process group) when it reaches persist.
    crashing = DaemonProcess(config, env={"GATEWAY_CRASH_AT": "after-ack-before-persist"}).start()
    assert crashing.send(make_email(subject="Scanner down", message_id="<k1@x>")) == {}
    assert crashing.proc is not None
    crashing.proc.wait(timeout=30)  # died by its own SIGKILL, with the message acknowledged
    assert tickets(config) == []
    spool = Path(crashing.state) / "spool"
    assert any(spool.rglob("*.msg")), "the acknowledged message must still be in the spool"

    restarted = DaemonProcess(config).start()
    try:
        wait_for(lambda: len(tickets(config)) == 1)
        time.sleep(1.0)
        (ticket,) = tickets(config)
        assert ticket["subject"] == "Scanner down"
        assert restarted.status()["spool_depth"] == 0
    finally:
        restarted.stop()


def test_kill_9_mid_transaction_never_doubles_and_the_redelivery_is_a_duplicate(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    crashing = DaemonProcess(config, env={"GATEWAY_CRASH_AT": "mid-transaction"}).start()
    raw = make_email(subject="Faxes failing", message_id="<k2@x>")
    assert crashing.send(raw) == {}
    assert crashing.proc is not None
    crashing.proc.wait(timeout=30)
    restarted = DaemonProcess(config).start()
    try:
        wait_for(lambda: len(tickets(config)) == 1)
        # The sending MTA, unsure, delivers again: recorded as a duplicate, no second ticket.
        assert restarted.send(raw) == {}
        wait_for(lambda: restarted.status()["spool_depth"] == 0)
        time.sleep(1.5)
        assert len(tickets(config)) == 1
    finally:
        restarted.stop()


class SwitchableProxy:
    """A TCP proxy to PostgreSQL we can take down and bring back: the database 'goes away'."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        # The port stays bound (never listening) for the proxy's whole life. A port only picked
        # and let go is free for the kernel to hand out again: the daemon's own retries against
        # the "down" database, connecting to a free port in the ephemeral range, can be given
        # it as their source port (TCP self-connect), and `up` then failed with EADDRINUSE. A
        # bound port is never handed out, and connecting to it is refused, as to a database
        # that is down; `up` listens on a second socket bound beside it (SO_REUSEADDR on both).
        self._reserved = socket.socket()
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._reserved.bind(("127.0.0.1", 0))
        self.port: int = self._reserved.getsockname()[1]
        self.server: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(50)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def close(self) -> None:
        self.down()
        self._reserved.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


@pytest.fixture
def proxy(pg_url: str) -> Iterator[tuple[SwitchableProxy, str]]:
    p = SwitchableProxy(("127.0.0.1", 5432))
    yield p, pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{p.port}")
    p.close()


def test_with_the_database_down_smtp_still_answers_250_and_tickets_appear_when_it_returns(
    make_config: Callable[..., Path], proxy: tuple[SwitchableProxy, str], pg_url: str
) -> None:
    switch, proxied_url = proxy
    config = make_config(storage__url=proxied_url)
    # The database is unreachable from the very start: the daemon must still start and accept.
    daemon = DaemonProcess(config).start()
    try:
        for i in range(5):
            assert daemon.send(make_email(body=f"problem {i}", message_id=f"<db{i}@x>")) == {}
        time.sleep(2.0)
        assert daemon.status()["spool_depth"] == 5
        assert daemon.status()["quarantine"] == 0
        switch.up()
        wait_for(lambda: daemon.status()["spool_depth"] == 0, timeout=60)
        config_direct = make_config(storage__url=pg_url)
        assert len(tickets(config_direct)) == 5
        # And down again mid-flight: still 250, still no quarantine, all there afterwards.
        switch.down()
        for i in range(5, 8):
            assert daemon.send(make_email(body=f"problem {i}", message_id=f"<db{i}@x>")) == {}
        time.sleep(2.0)
        switch.up()
        wait_for(lambda: daemon.status()["spool_depth"] == 0, timeout=60)
        assert len(tickets(config_direct)) == 8
        assert daemon.status()["quarantine"] == 0
    finally:
        daemon.stop()
