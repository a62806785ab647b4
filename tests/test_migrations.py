"""The Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL.

A model changed without its migration (or the reverse) fails here, not in production."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.storage.db import make_engine, upgrade
from gateway.storage.models import Base


def test_migrations_build_the_schema_the_models_declare(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
