"""Channels' own bookkeeping in the database: a narrow get/set by (channel, key).

Owns reads and writes of the `channel_state` table, each in its own short transaction, so a
channel (the IMAP poller's mailbox cursor) never holds a database connection while it talks to
its server. Never touches tickets, intakes or anything else: channels do not write tickets.
Every method may raise SQLAlchemy's errors when the database is down; callers treat that as
"keep it in memory and try again later", never as a reason to stop intake.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

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
            now = datetime.now(UTC)
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
