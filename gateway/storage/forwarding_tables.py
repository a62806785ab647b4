"""Tables of forwarding into existing help desks: the change journal and webhook deliveries.

Owns two tables and the one rule that makes forwarding complete:

* `forward_changes` — a journal with one row per ticket insert and per ticket UPDATE that
  changed a column. The rows are written by SQLAlchemy *mapper events* on `Ticket`
  (`after_insert`, `after_update`), on the flush's own connection, so each row commits or rolls
  back with the very change it records (a transactional outbox, with no call to forget: persist,
  admin commands, the API, the escalation scheduler and every later writer are covered by
  changing a ticket through the ORM, which they do anyway). The journal knows nothing of the
  configuration; `gateway.outbound.forwarding_sender.fan_out` turns its rows into deliveries.
* `forward_deliveries` — one POST to one webhook for one change, delivered at least once:
  unique `idempotency_key` (`<webhook>:<ticket reference>:<change id>`), a stored body (the
  same bytes on every attempt), status `pending | sending | delivered | dead`, attempts, the
  next attempt's time and a lease like the outbox's.

Must never: be bypassed. A bulk UPDATE, INSERT or DELETE statement on the tickets table skips
mapper events and so would skip forwarding: change tickets through the ORM (load, set, commit);
tests/forwarding/test_journal.py fails on such a statement anywhere in the code. The one
exception is `insert_ticket` here, persist's hot path for a new ticket (issue 20 outcome 1: no
ORM unit of work per message), which journals its insert itself, in this module, next to the
listeners that journal every other change.
Shares `Base` (gateway.storage.base) with gateway.storage.models, which imports this module at
its end so Alembic sees every table; never imports models back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    event,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column, object_session
from sqlalchemy.sql.expression import Executable

from gateway import clock as business_clock
from gateway.storage.base import Base, UTCDateTime
from gateway.storage.ticket_reference import reference, reference_sql

CREATED = "created"
UPDATED = "updated"


class ForwardChange(Base):
    """A committed change to a ticket, not yet turned into deliveries (deleted when it is)."""

    __tablename__ = "forward_changes"
    # Ids are the order of changes and part of idempotency keys, so they must never be reused.
    # SQLite reuses the highest rowid once its row is deleted (and fan-out deletes every row)
    # unless the table is AUTOINCREMENT; PostgreSQL's sequence never goes back.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    event: Mapped[str] = mapped_column(String(16))  # created | updated
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class ForwardDelivery(Base):
    """One signed POST of one ticket change to one webhook, retried until delivered or dead."""

    __tablename__ = "forward_deliveries"
    # The claim query: due pending rows, and "is an earlier delivery of this ticket to this
    # webhook still outstanding?" (deliveries of one ticket go out in order).
    __table_args__ = (
        Index("ix_forward_deliveries_due", "status", "next_attempt_at"),
        Index("ix_forward_deliveries_ticket", "webhook", "ticket_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    reference: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(16))  # created | updated
    # Unique: fan-out run twice, or by two instances, never makes a second delivery of a change.
    idempotency_key: Mapped[str] = mapped_column(String(160), unique=True)
    # The journal row's id: the order of changes (also sent as "sequence").
    change_id: Mapped[int] = mapped_column(Integer)
    # The exact JSON sent; emptied once delivered (it holds customer text: keep it no longer).
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | sending | delivered | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The receiver's HTTP status of the last attempt (None: no answer — timeout, refused).
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# Built once: building a statement costs about as much as running it.
JOURNAL_TABLE = cast(Table, ForwardChange.__table__)
JOURNAL = insert(JOURNAL_TABLE)


def journal_row(ticket_id: int, kind: str) -> dict[str, Any]:
    """The journal's row for one change of one ticket, as `JOURNAL` takes it."""
    return {"ticket_id": ticket_id, "event": kind, "at": business_clock.now()}


def _journal(connection: Connection, ticket_id: int, kind: str) -> None:
    connection.execute(JOURNAL, journal_row(ticket_id, kind))


# The listeners' target is a gateway.storage.models.Ticket; typed Any because this module must
# not import models (models imports it to register the table, then calls journal_changes_of).
def _ticket_inserted(_mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    _journal(connection, target.id, CREATED)


def _ticket_updated(_mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    # after_update also runs for objects marked dirty without a net column change (SQLAlchemy
    # docs, MapperEvents.after_update): those issued no UPDATE and are no change to forward.
    session = object_session(target)
    if session is not None and not session.is_modified(target, include_collections=False):
        return
    # A ticket gets its reference (from its id) right after the INSERT, in the same transaction
    # (stages/persist.py): still its creation, journalled by after_insert. Fan-out reads the
    # committed ticket, so the creation's delivery carries the reference and the rest.
    reference = inspect(target).attrs.reference.history
    if reference.added and not any(reference.deleted):
        return
    _journal(connection, target.id, UPDATED)


# The statements of `insert_ticket`, built once `journal_changes_of` has named the tickets table
# (this module never imports models): the table and the insert with a given id.
_ticket_statements: list[tuple[Table, Executable]] = []


def journal_changes_of(ticket: type[Base]) -> None:
    """Listen to `ticket`'s mapper events (called once, by gateway.storage.models, on Ticket)."""
    event.listen(ticket, "after_insert", _ticket_inserted)
    event.listen(ticket, "after_update", _ticket_updated)
    tickets = cast(Table, ticket.__table__)
    _ticket_statements[:] = [
        (tickets, insert(tickets))
    ]


def _ticket_row(values: Mapping[str, Any], ticket_id: int) -> dict[str, Any]:
    """A new ticket's row with the id its writer chose and the reference made from it."""
    return {**values, "id": ticket_id, "reference": reference(ticket_id)}


def insert_ticket(
    connection: Connection,
    values: Mapping[str, Any],
    ticket_id: int | None = None,
    journal: list[dict[str, Any]] | None = None,
    defer: Callable[[dict[str, Any]], object] | None = None,
) -> int:
    """Insert a new ticket, with its reference, in one statement without the ORM and journal
    its creation, on `connection` (so in the caller's transaction, committed or rolled back with
    it); return its id (issue 20 outcome 1: no unit of work, no UPDATE for the reference).

    The id is `ticket_id` when the caller allocated it (SQLite's batch, the only writer under
    BEGIN IMMEDIATE; PostgreSQL's write-behind, from the sequence); without it (PostgreSQL) the
    INSERT takes it from the table's sequence and makes the reference from it in SQL. With
    `defer` (and `ticket_id`) the row is handed to it for the caller to write later in the same
    transaction (persist's write-behind) instead of inserted here. The journal row is appended
    to `journal` when given, for the caller to write with the rest of its batch's before it
    commits (`JOURNAL`), else written here."""
    ((tickets, insert_with_id),) = _ticket_statements
    if ticket_id is not None and defer is not None:
        defer(_ticket_row(values, ticket_id))
    elif ticket_id is not None:
        connection.execute(insert_with_id, _ticket_row(values, ticket_id))
    else:
        numbered = _numbered_insert(tickets, tuple(values))
        ticket_id = connection.execute(numbered, dict(values)).scalar_one()
    row = journal_row(ticket_id, CREATED)
    if journal is None:
        connection.execute(JOURNAL, row)
    else:
        journal.append(row)
    return ticket_id


@functools.cache
def _numbered_insert(tickets: Table, names: tuple[str, ...]) -> Executable:
    """PostgreSQL: `INSERT INTO tickets (id, reference, <names>) SELECT n.id, <reference of
    n.id>, <names> FROM (SELECT nextval(<the id's sequence>)) AS n RETURNING id`. Each value is
    cast to its column's type: PostgreSQL gives a SELECT's parameters no type from the INSERT's
    columns (a NULL would arrive as text). Built once per set of columns."""
    sequence = func.pg_get_serial_sequence(tickets.name, tickets.c.id.name)
    n = select(func.nextval(sequence).label("id")).subquery("n")
    columns = [sql_cast(bindparam(name, type_=tickets.c[name].type), tickets.c[name].type)
               for name in names]
    rows = select(n.c.id, reference_sql(n.c.id), *columns)
    return (
        insert(tickets)
        .from_select(["id", "reference", *names], rows, include_defaults=True)
        .returning(tickets.c.id)
    )


__all__ = [
    "CREATED",
    "JOURNAL",
    "JOURNAL_TABLE",
    "UPDATED",
    "ForwardChange",
    "ForwardDelivery",
    "insert_ticket",
    "journal_changes_of",
    "journal_row",
]
