"""Forwarding test support: a real HTTP receiver on a real port that fails on a script, a
frozen clock for the sender, forwarding.toml writers and docs/forwarding.md's verification
snippet."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway import clock
from gateway.outbound import forwarding_sender
from tests.helpers import Gateway

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-for-tests-only"
WEBHOOK = "helpdesk"


@dataclass
class Received:
    """One request as the receiver saw it, and what it answered ("ok", 500, "drop", ...)."""

    headers: Message
    body: bytes
    answer: str | int

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def key(self) -> str:
        return str(self.headers["Idempotency-Key"])


@dataclass
class Receiver:
    """A help desk's webhook endpoint: answers each request by the next step of `script`
    (an HTTP status, "drop": close without answering, "hang": answer nothing for `hang_seconds`,
    ("redirect", url)), then 200 for ever after (or `after` if set)."""

    script: list[Any] = field(default_factory=list)
    after: Any = 200
    hang_seconds: float = 2.0
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/intake"

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.answer == 200]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    step = receiver.script.pop(0) if receiver.script else receiver.after
                    receiver.requests.append(Received(self.headers, body, _name(step)))
                if step == "drop":
                    self.close_connection = True  # no status line at all: the peer sees EOF
                    return
                if step == "hang":
                    time.sleep(receiver.hang_seconds)
                    self.close_connection = True
                    return
                if isinstance(step, tuple) and step[0] == "redirect":
                    self.close_connection = True
                    self.send_response(307)
                    self.send_header("Location", step[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = b'{"ok": true}' if step == 200 else b"receiver says no"
                self.close_connection = True  # one request per connection: nothing left open
                self.send_response(int(step))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _name(step: Any) -> str | int:
    if isinstance(step, tuple):
        return str(step[0])
    return step if isinstance(step, int) else str(step)


def webhook_toml(name: str, url: str, **keys: Any) -> str:
    values = {
        "max_attempts": 5,
        "timeout_seconds": 2.0,
        "backoff_seconds": 0.05,
        "max_backoff_seconds": 0.2,
        **keys,
    }
    lines = ["[[webhook]]", f"name = {json.dumps(name)}", f"url = {json.dumps(url)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_forwarding(config: Path, *webhooks: str, poll_seconds: float = 0.05) -> None:
    text = (config / "forwarding.toml").read_text()
    text = re.sub(r"^poll_seconds = .*$", f"poll_seconds = {poll_seconds}", text, flags=re.M)
    (config / "forwarding.toml").write_text(text + "\n" + "\n".join(webhooks))


class Clock:
    """A frozen clock the sender reads; tests move it past a backoff instead of sleeping."""

    def __init__(self) -> None:
        self.now = clock.now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def forward(gw: Gateway, clock: Clock) -> int:
    """One pass of worker 0's forwarding thread, on the test's clock."""
    return forwarding_sender.run_once(
        gw.worker.sessions, gw.box.current.settings.forwarding, "test", clock
    )


def deliveries(gw: Gateway) -> list[Any]:
    from sqlalchemy import select

    from gateway.storage.forwarding_tables import ForwardDelivery

    with gw.session() as s:
        return list(s.execute(select(ForwardDelivery).order_by(ForwardDelivery.id)).scalars())


def readme_verify() -> Callable[[bytes, Any, bytes], bool]:
    """The verification snippet of docs/forwarding.md "Forwarding into your help desk", executed
    as is."""
    text = (ROOT / "docs" / "forwarding.md").read_text()
    section = text[text.index("## Forwarding into your help desk") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    assert snippet is not None, "docs/forwarding.md has no Python verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(snippet.group(1), "docs/forwarding.md (forwarding snippet)", "exec"), namespace)
    verify: Callable[[bytes, Any, bytes], bool] = namespace["verify"]
    return verify
