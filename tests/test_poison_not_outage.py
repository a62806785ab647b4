"""A message the database refuses is this message's fault, not an outage: it is retried and
quarantined like any poison message, never deferred forever as "database unavailable" (which
stalled the worker on one long non-ASCII Message-ID on PostgreSQL)."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from gateway.pipeline import storage_unavailable
from gateway.stages.persist import index_safe


def test_a_postgresql_index_limit_error_is_the_messages_fault_and_a_lost_server_is_not(
    pg_url: str,
) -> None:
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TEMP TABLE ids (v text)"))
            conn.execute(text("CREATE INDEX ON ids (v)"))
            with pytest.raises(OperationalError) as too_big:
                # Random text does not compress below btree's 2,704-byte entry limit.
                conn.execute(text("INSERT INTO ids VALUES (:v)"), {"v": os.urandom(6000).hex()})
        assert too_big.value.orig is not None
        assert getattr(too_big.value.orig, "sqlstate", "")[:2] == "54"
        assert not storage_unavailable(too_big.value)
    finally:
        engine.dispose()
    nobody = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    with pytest.raises(OperationalError) as down:
        nobody.connect()
    assert storage_unavailable(down.value)


def test_a_stored_message_id_fits_an_index_whatever_its_alphabet() -> None:
    long_id = "ü" * 998 + "@example.com"
    cut = index_safe(long_id)
    assert len(cut.encode("utf-8")) <= 998
    assert long_id.startswith(cut)  # cut on a character boundary, never mid-character
    assert index_safe("<a@b.example>") == "<a@b.example>"
