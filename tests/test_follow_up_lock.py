"""A follow-up's ticket as persist updates it (`current_locked`): current, and held against other
writers until the batch commits, on both databases.

PostgreSQL: the thread look-up reads a ticket without a lock, so the follow-up locks the row and
reads it again; what another worker committed in between is kept, not written over. SQLite: the
worker's BEGIN IMMEDIATE already excludes every other writer, so a ticket the batch has loaded
costs no statement (issue 20)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, update

from gateway.stages.persist import current_locked
from gateway.storage.models import Ticket
from tests.helpers import Gateway, make_email


def _one_ticket(make_config: Callable[..., Path], url: str) -> tuple[Gateway, int]:
    gw = Gateway(make_config(storage__url=url))
    gw.ingest(make_email("Printer offline", "It stopped this morning.", message_id="<a@x>"))
    gw.drain()
    (ticket,) = gw.tickets()
    return gw, ticket.id


def test_on_postgresql_a_change_committed_after_the_look_up_is_read_under_the_lock(
    make_config: Callable[..., Path], pg_url: str
) -> None:
    gw, ticket_id = _one_ticket(make_config, pg_url)
    try:
        with gw.worker.sessions.begin() as batch:
            looked_up = batch.get(Ticket, ticket_id)  # the thread look-up: no lock
            assert looked_up is not None and looked_up.message_count == 1
            with gw.worker.engine.begin() as other_worker:
                other_worker.execute(
                    update(Ticket).where(Ticket.id == ticket_id).values(message_count=5)
                )
            locked = current_locked(batch, ticket_id)
            assert locked is looked_up
            assert locked.message_count == 5  # not the 1 the look-up read
            locked.message_count += 1
        (ticket,) = gw.tickets()
        assert ticket.message_count == 6
    finally:
        gw.close()


def test_on_sqlite_a_ticket_the_batch_has_loaded_costs_no_statement(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    gw, ticket_id = _one_ticket(make_config, f"sqlite:///{tmp_path / 'state' / 'gateway.db'}")
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    try:
        with gw.worker.sessions.begin() as batch:
            looked_up = batch.get(Ticket, ticket_id)
            event.listen(gw.worker.engine, "before_cursor_execute", seen)
            try:
                assert current_locked(batch, ticket_id) is looked_up
            finally:
                event.remove(gw.worker.engine, "before_cursor_execute", seen)
            assert statements == []
            # Not yet loaded: read, once.
            batch.expunge(looked_up)
            event.listen(gw.worker.engine, "before_cursor_execute", seen)
            try:
                again = current_locked(batch, ticket_id)
            finally:
                event.remove(gw.worker.engine, "before_cursor_execute", seen)
            assert again is not None and again.id == ticket_id
            assert len(statements) == 1 and "FOR UPDATE" not in statements[0]
    finally:
        gw.close()
