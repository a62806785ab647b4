"""COPY writes what an INSERT writes (gateway/storage/bulk.py, issue 20 outcome 1): persist's
rows written behind on PostgreSQL go through `copy_rows`, so every column, default, JSON
value and constraint must come out as the Core INSERT of the same rows would leave them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from sqlalchemy import Table, create_engine, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.storage.bulk import copy_rows
from gateway.storage.db import upgrade
from gateway.storage.models import Intake, Message, Ticket

AT = datetime(2026, 12, 15, 15, 0, tzinfo=UTC)  # a named instant; nothing here reads the clock
TICKETS = cast(Table, Ticket.__table__)
MESSAGES = cast(Table, Message.__table__)
INTAKES = cast(Table, Intake.__table__)


def ticket(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "reference": f"T-{n:06d}",
        "severity": "urgent",
        "severity_rank": 0,
        "jump_queue": True,
        "channel": "smtp",
        "account_id": "acme",
        "plan": "growth",
        "subject": "Kassen – alle offline; ü \\ \t tab and \\N too",
        "created_at": AT,
        "updated_at": AT,
        "first_response_due": None,
        "explanation": {"classifier": {"hits": ["KW_DOWN"], "text": "naïve \"quoted\"\nline"}},
        "tags": ["parse-defect", "vip"],
        # The rest (status, held, tags' default...) left to the columns' Python defaults.
    }


def comparable(row: Any, table: Table) -> dict[str, Any]:
    skipped = ("id", "reference")
    return {c.name: getattr(row, c.name) for c in table.columns if c.name not in skipped}


def test_copied_rows_equal_inserted_rows_defaults_json_and_nulls_included(pg_url: str) -> None:
    upgrade(pg_url)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(insert(TICKETS), [ticket(1)])
        copy_rows(conn, TICKETS, [ticket(2), ticket(3)])
        message = {
            "ticket_id": 2,
            "channel": "smtp",
            "subject": "Re: x",
            "received_at": AT,
            "raw_sha256": "ab" * 32,
            "raw_size": 10,
            "verdict": {"severity": "urgent"},
        }
        conn.execute(insert(MESSAGES), [{**message, "id": 1}])
        copy_rows(conn, MESSAGES, [{**message, "id": 2}])
    with engine.connect() as conn:
        tickets = conn.execute(select(TICKETS).order_by(TICKETS.c.id)).all()
        messages = conn.execute(select(MESSAGES).order_by(MESSAGES.c.id)).all()
    inserted, *copied = (comparable(t, TICKETS) for t in tickets)
    assert copied == [inserted, inserted]
    assert inserted["status"] == "new" and inserted["held"] is False
    assert inserted["tags"] == ["parse-defect", "vip"]
    assert comparable(messages[1], MESSAGES) == comparable(messages[0], MESSAGES)
    assert messages[1].direction == "in" and messages[1].automated == "human"
    engine.dispose()


def test_a_copied_row_breaking_a_unique_key_raises_integrity_error_and_writes_nothing(
    pg_url: str,
) -> None:
    """Persist's batch retry (gateway.pipeline) catches SQLAlchemy's IntegrityError, as from
    an INSERT: a twin's claim of a dedup key met in a COPY must read the same."""
    upgrade(pg_url)
    engine = create_engine(pg_url)
    claim = {
        "spool_id": "s1",
        "dedup_key": "mid:<a@b>",
        "first_key": "mid:<a@b>",
        "outcome": "ticket",
        "channel": "smtp",
        "received_at": AT,
        "processed_at": AT,
    }
    with engine.begin() as conn:
        conn.execute(insert(INTAKES), [claim])
    with pytest.raises(IntegrityError), engine.begin() as conn:
        copy_rows(conn, INTAKES, [{**claim, "spool_id": "s2"}, {**claim, "spool_id": "s3"}])
    with engine.connect() as conn:
        assert conn.execute(select(INTAKES.c.spool_id)).scalars().all() == ["s1"]
    engine.dispose()
