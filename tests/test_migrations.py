"""The Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL.

A model changed without its migration (or the reverse) fails here, not in production."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.storage.db import make_engine, upgrade
from gateway.storage.models import Base


def test_migrations_build_the_schema_the_models_declare(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


def test_migration_0008_turns_tickets_held_by_a_pending_emergency_request_into_marked_ones(
    empty_database_url: str,
) -> None:
    """Issue 17 item 1: a ticket held "awaiting acknowledgement" by an open request leaves the
    hold (it is no longer last in the queue) and carries the emergency-pending mark instead; a
    ticket whose request already ended is left as it was."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    upgrade(empty_database_url, "0007")
    engine = make_engine(empty_database_url)
    at = datetime(2026, 11, 17, 15, 0, tzinfo=UTC)
    try:
        tables = sa.MetaData()
        tables.reflect(engine, only=("tickets", "emergency_requests"))
        tickets, requests = tables.tables["tickets"], tables.tables["emergency_requests"]
        ticket = {
            "status": "new",
            "severity": "normal",
            "severity_rank": 2,
            "jump_queue": False,
            "jump_reason": "",
            "hold_reason": "awaiting acknowledgement: asked by the subject marker",
            "channel": "smtp",
            "account_id": "acme-clinic",
            "plan": "growth",
            "queue": "support",
            "subject": "Server down",
            "language": "en",
            "created_at": at,
            "updated_at": at,
            "message_count": 1,
            "explanation": {},
        }
        request = {
            "account_id": "acme-clinic",
            "channel": "email",
            "signal": "the subject marker [EMERGENCY]",
            "requested_at": at,
            "reference": "<r@x>",
            "text": "Server down",
            "sender": "dana@acme-clinic.example",
            "contact": "Dana",
            "authenticated": True,
            "authentication": "test",
            "reason": "test",
            "classified": "normal",
            "review": "",
            "terms_version": "2026-11",
            "currency": "USD",
            "price_minor": 25000,
            "surcharge_minor": 0,
            "after_hours": False,
            "after_hours_reason": "",
            "resolution": "",
        }
        with engine.begin() as conn:
            for ticket_id, held, status in ((1, True, "awaiting"), (2, True, "expired")):
                conn.execute(tickets.insert().values(id=ticket_id, held=held, **ticket))
                conn.execute(
                    requests.insert().values(ticket_id=ticket_id, status=status, **request)
                )
            conn.execute(tickets.insert().values(id=3, held=False, **{**ticket, "hold_reason": ""}))
    finally:
        engine.dispose()
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, held, emergency_pending FROM tickets ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    assert [(i, bool(h), bool(p)) for i, h, p in rows] == [
        (1, False, True),
        (2, True, False),
        (3, False, False),
    ]
