"""Channels' own bookkeeping in the database: a narrow get/set by (channel, key).

Owns reads and writes of the `channel_state` table, each in its own short transaction, so a
channel (the IMAP poller's mailbox cursor) never holds a database connection while it talks to
its server. Never touches tickets, intakes or anything else: channels do not write tickets.
Every method may raise SQLAlchemy's errors when the database is down; callers treat that as
"keep it in memory and try again later", never as a reason to stop intake.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from gateway import clock as business_clock
from gateway.storage.db import is_sqlite, make_engine
from gateway.storage.models import ChannelState


class ChannelStateStore:
    """get/set of small string values by (channel, key), e.g. ("imap:support", "cursor")."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, channel: str, key: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(ChannelState.value).where(
                    ChannelState.channel == channel, ChannelState.key == key
                )
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def set(self, channel: str, key: str, value: str) -> None:
        """Insert or replace. Portable upsert: UPDATE, else INSERT; a concurrent INSERT that wins
        the unique constraint makes us UPDATE once more."""
        for _attempt in range(2):
            now = business_clock.now()
            try:
                with self.engine.begin() as conn:
                    changed = conn.execute(
                        update(ChannelState)
                        .where(ChannelState.channel == channel, ChannelState.key == key)
                        .values(value=value, updated_at=now)
                    ).rowcount
                    if not changed:
                        conn.execute(
                            insert(ChannelState).values(
                                channel=channel, key=key, value=value, updated_at=now
                            )
                        )
                return
            except IntegrityError:
                continue
        raise RuntimeError(f"channel_state ({channel!r}, {key!r}) could not be written")


# --- one IMAP poller per mailbox cluster-wide (several instances on one PostgreSQL) ----------


class ClusterLock:
    """A PostgreSQL session advisory lock, ``pg_try_advisory_lock(hashtext(name))``, held on a
    dedicated connection: exactly one instance sharing the database holds it, and it is freed
    the moment the holder's connection closes (the process died, the network went away).

    Used from one thread at a time. ``try_acquire`` raises SQLAlchemy's errors when the
    database cannot be asked (the caller decides what that means); ``alive`` never raises.
    On SQLite there is one instance per database by construction, so callers skip the lock.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self.alive():
            return True
        self._drop()
        conn = self.engine.connect()
        try:
            got = bool(
                conn.execute(
                    text("SELECT pg_try_advisory_lock(hashtext(:name))"), {"name": self.name}
                ).scalar()
            )
            conn.commit()  # a session lock outlives the transaction; nothing stays open
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def alive(self) -> bool:
        """True while our connection (hence the lock) is still there."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:
            self._drop()
            return False

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:name))"), {"name": self.name})
            conn.commit()
            conn.close()
        except Exception:
            self._conn = conn
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool: the session (and lock) must end
                conn.close()
            except Exception:
                pass


def open_store(database_url: str) -> ChannelStateStore:
    """A store on its own engine for `database_url` (the IMAP pollers' start-up): the one way a
    channel reaches the database, so channels import nothing else of storage."""
    return ChannelStateStore(make_engine(database_url))


def needs_cluster_lock(database_url: str) -> bool:
    """Whether pollers must take a ClusterLock: SQLite serves one instance, no lock needed;
    PostgreSQL may be shared by several instances."""
    return not is_sqlite(database_url)
