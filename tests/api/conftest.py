"""API test kit: the real `[api]` app (gateway/api/app.py) served by uvicorn on a real port,
over a real database and spool, with tokens of each scope configured the way an admin does it
(their SHA-256 in gateway.toml), and seeded tickets made by the real pipeline."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gateway import clock
from gateway.api.app import build_api_app
from gateway.api.auth import token_digest
from gateway.api.context import ApiContext
from gateway.intake.blobs import BlobStore
from gateway.service.health import health_endpoints
from gateway.service.metrics import GatewayCollector
from gateway.storage.db import make_engine, session_factory
from tests.helpers import BUSINESS_HOURS, Gateway, make_email

# Test tokens (never real ones): configured by their hashes, presented in clear.
READ_TOKEN = "igw_test-read-0f2b7c9e1d4a6b8c0e2f4a6c8e0b2d4f"
WRITE_TOKEN = "igw_test-write-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
ADMIN_TOKEN = "igw_test-admin-1122334455667788990011223344556677"
TOKENS = {"reader": (READ_TOKEN, "read"), "agent": (WRITE_TOKEN, "write")}
TOKENS["boss"] = (ADMIN_TOKEN, "admin")


def tokens_toml() -> str:
    return "".join(
        f'\n[[api.tokens]]\nname = "{name}"\nsha256 = "{token_digest(token)}"\n'
        f'scopes = ["{scope}"]\n'
        for name, (token, scope) in TOKENS.items()
    )


def add_tokens(config: Path) -> Path:
    with (config / "gateway.toml").open("a") as fh:
        fh.write(tokens_toml())
    return config


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    base: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTP request over a real socket; never raises for a 4xx/5xx."""
    data = None
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


class ApiServer:
    """gateway/api/app.py around a real Gateway (spool + worker + database), under uvicorn in a
    thread on an ephemeral port. `now` freezes the API's clock when set."""

    def __init__(self, config: Path, *, access_log: bool = False) -> None:
        self.config = config
        self.gateway = Gateway(config)
        settings = self.gateway.settings
        self.now: datetime | None = None
        sessions = self.gateway.worker.sessions
        self.write_engine = make_engine(settings.database_url, immediate=True)
        self.ctx = ApiContext(
            sessions=sessions,
            write_sessions=session_factory(self.write_engine),
            spool=self.gateway.spool,
            blobs=BlobStore(settings.state_dir / "blobs", fsync=False),
            settings=lambda: self.gateway.box.current.settings,
            clock=lambda: self.now or clock.now(),
        )
        status_dir = settings.state_dir / "status"
        status_dir.mkdir(parents=True, exist_ok=True)
        collector = GatewayCollector(sessions, self.gateway.spool, status_dir, lambda: {})
        health = health_endpoints(
            sessions, self.gateway.spool, collector, lambda: {"api": "test"}, 1024 * 1024
        )
        self.app = build_api_app(self.ctx, health)
        self.access_log = access_log
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            lifespan="off",
            # log_config=None: uvicorn's loggers (access and error) propagate to the root
            # logger, so a test can read every line they write.
            log_config=None,
            access_log=self.access_log,
            log_level="debug" if self.access_log else "warning",
        )
        self._server = uvicorn.Server(config)
        if self.access_log:
            # An earlier server with access_log=False turned the access logger's propagation
            # off for the whole process (uvicorn configures loggers globally): turn it back on.
            logging.getLogger("uvicorn.access").propagate = True
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        deadline = 200
        while not self._server.started and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        assert self._server.started, "uvicorn did not start"
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self

    async def _serve(self) -> None:
        assert self._server is not None
        await self._server.serve()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.gateway.close()
        self.write_engine.dispose()

    def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        return call(self.base, method, path, **kwargs)

    def get(self, path: str, token: str | None = READ_TOKEN) -> Reply:
        return self.call("GET", path, token=token)

    def post(self, path: str, body: Any, token: str | None = WRITE_TOKEN) -> Reply:
        return self.call("POST", path, token=token, body=body)

    def ingest(self, raw: bytes, **kwargs: Any) -> None:
        self.gateway.ingest(raw, **kwargs)
        self.gateway.drain()


def mail_with_attachment(
    filename: str, content: bytes, content_type: str = "text/plain", **kwargs: Any
) -> bytes:
    raw = make_email(**kwargs)
    from email import message_from_bytes, policy

    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    maintype, subtype = content_type.split("/", 1)
    msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


SEEDS = (
    # (subject, body, sender, message-id)
    ("Export question", "How do I export the report to CSV?", "sam@bluebird.example", "<s1@x>"),
    (
        "Everything is down",
        "None of our staff can open the application since 7am. Patients are waiting.",
        "dana@acme-clinic.example",
        "<s2@x>",
    ),
    ("Feature idea", "It would be nice to have dark mode.", "someone@unknown.example", "<s3@x>"),
)


def seed(server: ApiServer) -> None:
    """Three tickets by the real pipeline (T-000001..3) and one with an attachment (T-000004)."""
    for subject, body, sender, mid in SEEDS:
        server.gateway.ingest(make_email(subject=subject, body=body, sender=sender, message_id=mid))
    server.gateway.ingest(
        mail_with_attachment(
            "../../etc/passwd\u202e.txt",
            b"attached report\n",
            subject="Report attached",
            body="See the attached report.",
            sender="sam@bluebird.example",
            message_id="<s4@x>",
        )
    )
    server.gateway.drain()
    assert [t.reference for t in server.gateway.tickets()] == [f"T-00000{i}" for i in (1, 2, 3, 4)]


@pytest.fixture
def api_config(make_config: Callable[..., Path], database_url: str) -> Callable[..., Path]:
    """The sample config on each backend, with a read, a write and an admin token."""

    def factory(**overrides: object) -> Path:
        return add_tokens(make_config(storage__url=database_url, **overrides))

    return factory


@pytest.fixture
def sqlite_api_config(make_config: Callable[..., Path]) -> Callable[..., Path]:
    """The same on SQLite only (for tests whose subject is not the database)."""

    def factory(**overrides: object) -> Path:
        return add_tokens(make_config(**overrides))

    return factory


@pytest.fixture
def api(
    api_config: Callable[..., Path], pin_clock: Callable[[str], datetime]
) -> Iterator[ApiServer]:
    """A live API with seeded tickets, on SQLite and on PostgreSQL, seeded in business hours
    (the seeded outage would go to on-call after hours and change the queues)."""
    pin_clock(BUSINESS_HOURS)
    server = ApiServer(api_config()).start()
    seed(server)
    yield server
    server.stop()


@pytest.fixture
def sqlite_api(
    sqlite_api_config: Callable[..., Path], pin_clock: Callable[[str], datetime]
) -> Iterator[ApiServer]:
    """A live API with seeded tickets on SQLite, seeded in business hours."""
    pin_clock(BUSINESS_HOURS)
    server = ApiServer(sqlite_api_config()).start()
    seed(server)
    yield server
    server.stop()


@pytest.fixture
def all_logs() -> Iterator[list[str]]:
    """Every log line any logger writes during the test (uvicorn's access and error logs
    included), formatted as a handler would write them."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(args)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # Any uvicorn started earlier in this process with its default log_config (the queue page's
    # and the dead-letter tests' servers, the daemon's http_server) ran dictConfig, which stops
    # uvicorn's loggers propagating and raises their level: this test then saw no access line
    # when it ran after one of them (found when the suite first ran in two processes).
    saved = {}
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        saved[name] = (logger.propagate, logger.disabled, logger.level)
        logger.propagate, logger.disabled = True, False
        logger.setLevel(logging.NOTSET)
    yield lines
    for name, (propagate, disabled, level) in saved.items():
        logger = logging.getLogger(name)
        logger.propagate, logger.disabled = propagate, disabled
        logger.setLevel(level)
    root.removeHandler(handler)
    root.setLevel(old_level)
