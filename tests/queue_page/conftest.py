"""The queue page served for real: its routes in a Starlette app under uvicorn on a real port,
over a migrated database (SQLite, or both backends where a test asks for `database_url`), with
a frozen clock the test can move and a token table it can change (a config reload)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from gateway.api.auth import TokenTable, token_digest
from gateway.api.queue_page import LoginSessions, QueuePageSettings, queue_routes
from gateway.config.gateway_schema import ApiToken
from gateway.storage.db import make_engine, session_factory, upgrade
from gateway.storage.models import Ticket
from tests.helpers import free_port, wait_for

TOKEN = "igw_shift-lead-test-token-0123456789abcdefghijklmnop"
LEVELS = ("urgent", "high", "normal", "low")
T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York


@dataclass
class Clock:
    """A frozen clock the test moves by hand."""

    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@dataclass
class Tokens:
    """The live token table, as a reload would swap it."""

    table: TokenTable = field(
        default_factory=lambda: TokenTable.from_config(
            [ApiToken(name="shift-lead", sha256=token_digest(TOKEN), scopes=("read",))]
        )
    )

    def __call__(self) -> TokenTable:
        return self.table


def add_ticket(sessions: sessionmaker[Session], **fields: Any) -> Ticket:
    """A ticket row as `persist` would leave it; `fields` override the defaults."""
    with sessions() as session:
        n = fields.pop("n", None) or (session.query(Ticket).count() + 1)
        level = fields.pop("severity", "normal")
        values: dict[str, Any] = {
            "reference": f"T-{n:06d}",
            "status": "new",
            "severity": level,
            "severity_rank": LEVELS.index(level),
            "channel": "email",
            "account_id": "acme-clinic",
            "contact_email": "dana@acme-clinic.example",
            "contact_name": "Dana Whitfield",
            "plan": "growth",
            "subject": f"ticket {n}",
            "created_at": T0 - timedelta(hours=1),
            "updated_at": T0 - timedelta(hours=1),
            "first_response_due": T0 + timedelta(hours=23),
            "resolution_due": T0 + timedelta(days=5),
        }
        values.update(fields)
        ticket = Ticket(**values)
        session.add(ticket)
        session.commit()
        session.refresh(ticket)
        session.expunge(ticket)
        return ticket


@dataclass
class QueueServer:
    base_url: str
    sessions: sessionmaker[Session]
    clock: Clock
    tokens: Tokens
    logins: LoginSessions

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, follow_redirects=False, timeout=10)

    @contextmanager
    def logged_in(self) -> Iterator[httpx.Client]:
        with self.client() as client:
            response = client.post("/queue/login", data={"token": TOKEN})
            assert response.status_code == 303, response.text
            yield client

    def add(self, **fields: Any) -> Ticket:
        return add_ticket(self.sessions, **fields)


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def start_queue_server(
    url: str, settings: QueuePageSettings | None = None
) -> Iterator[QueueServer]:
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    clock, tokens, logins = Clock(), Tokens(), LoginSessions()
    routes = queue_routes(
        sessions=sessions,
        tokens=tokens,
        levels=lambda: LEVELS,
        now=clock,
        settings=settings,
        logins=logins,
    )
    try:
        with serve(Starlette(routes=routes)) as base:
            yield QueueServer(base, sessions, clock, tokens, logins)
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    (tmp_path / "state").mkdir(exist_ok=True)
    return f"sqlite:///{tmp_path / 'state' / 'gateway.db'}"


@pytest.fixture
def queue_server(sqlite_url: str) -> Iterator[QueueServer]:
    with start_queue_server(sqlite_url) as server:
        yield server


@pytest.fixture
def queue_server_any_db(database_url: str) -> Iterator[QueueServer]:
    """The same, once on SQLite and once on PostgreSQL."""
    if database_url.startswith("sqlite"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with start_queue_server(database_url) as server:
        yield server
