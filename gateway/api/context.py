"""What the API's routes work with, passed in once: `ApiContext`, reachable from a request.

Owns the one value the app is built from (database sessions, spool, blob store, the live
settings, the clock) and the FastAPI dependency that hands it to a route. No globals: tests
build their own context around their own database and spool. Never holds state of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from gateway import clock as business_clock
from gateway.api.auth import TokenSource, TokenTable
from gateway.config.loader import Settings
from gateway.config.schema import ApiToken
from gateway.intake.blobs import BlobStore
from gateway.intake.spool import Spool

CONTEXT_KEY = "api_context"



@dataclass(frozen=True)
class ApiContext:
    # Reads (SQLite: plain BEGIN, never blocks the worker).
    sessions: sessionmaker[Session]
    # Writes (SQLite: BEGIN IMMEDIATE, so a write never deadlocks upgrading a read lock).
    write_sessions: sessionmaker[Session]
    spool: Spool
    blobs: BlobStore
    # The live configuration: a reload (SIGHUP) takes effect on the next request.
    settings: Callable[[], Settings]
    clock: Callable[[], datetime] = field(default=business_clock.now)


def token_source(settings: Callable[[], Settings]) -> TokenSource:
    """The token table of the live settings, rebuilt only when `[[api.tokens]]` changed."""
    last: list[tuple[tuple[ApiToken, ...], TokenTable]] = []

    def current() -> TokenTable:
        tokens = settings().gateway.api.tokens
        if not last or last[0][0] != tokens:
            last[:] = [(tokens, TokenTable.from_config(tokens))]
        return last[0][1]

    return current


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = getattr(request.app.state, CONTEXT_KEY)
    return ctx


def read_session(request: Request) -> Iterator[Session]:
    """A read-only session for one request (FastAPI dependency)."""
    with get_context(request).sessions() as session:
        yield session
