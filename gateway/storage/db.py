"""Connections and migrations: one engine per process, SQLite tuned for a daemon, Alembic upgrades.

Owns how we connect (SQLite in WAL mode with a busy timeout, PostgreSQL through psycopg 3) and how
the schema is brought up to date. Never holds business logic and never creates tables outside a
migration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file_missing(url: str) -> Path | None:
    """The embedded SQLite file when it does not exist yet, else None. Read-only commands
    (`status`, `tickets`, `show`) check this first: opening it would create it and its
    directory (issue 17 item 6)."""
    if not is_sqlite(url):
        return None
    db_path = make_url(url).database
    if not db_path or db_path == ":memory:" or Path(db_path).exists():
        return None
    return Path(db_path)


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    """An engine for `url`. `immediate`: SQLite write transactions lock up front (workers)."""
    if is_sqlite(url):
        db_path = make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide when a transaction begins: pysqlite's own
            # implicit BEGIN breaks SAVEPOINT, which persist uses per message in a batch.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # WAL lets readers (CLI, API) work while the worker writes. synchronous=FULL makes
            # every commit durable: the worker deletes the spool entry right after commit, so a
            # commit lost to a power cut would be a message lost (DESIGN promise 1).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front: two worker processes never deadlock
            # upgrading a read transaction to a write one (SQLITE_BUSY without waiting).
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    url_obj = make_url(url)
    if url_obj.drivername == "postgresql":
        url_obj = url_obj.set(drivername="postgresql+psycopg")
    return create_engine(
        url_obj,
        pool_pre_ping=True,
        pool_size=5,
        connect_args={"connect_timeout": 5},
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def open_session(url: str, *, write: bool = False) -> Iterator[Session]:
    """One short-lived session for a command: committed when the block ends normally, rolled
    back on an exception, its engine disposed either way (a command run in-process leaves no
    connection behind). `write`: on SQLite the transaction takes the write lock up front
    (BEGIN IMMEDIATE) and waits for it, as the workers do; one that reads first and writes later
    fails at once with "database is locked" whenever a daemon thread holds the lock."""
    engine = make_engine(url, immediate=write)
    try:
        with session_factory(engine)() as session:
            yield session
            session.commit()
    finally:
        engine.dispose()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` (idempotent).

    On PostgreSQL several instances (and their workers) may start at once against one database:
    a session advisory lock makes them migrate one at a time (the others then find it done).
    """
    if is_sqlite(url):
        command.upgrade(alembic_config(url), revision)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(hashtext('gateway:migrations'))"))
            conn.commit()
            try:
                command.upgrade(alembic_config(url), revision)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(hashtext('gateway:migrations'))"))
                conn.commit()
    finally:
        engine.dispose()
