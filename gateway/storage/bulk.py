"""Many rows into one PostgreSQL table with COPY, in the caller's transaction.

Owns `copy_rows`: the rows a batch writes behind (persist's `BatchWrites`) go to the server as
one COPY … FROM STDIN instead of a multi-row INSERT. The INSERT, rendered with one bind
parameter per value (about 35 a ticket), cost 250 µs a ticket in SQLAlchemy, psycopg and the
server's parser (bench/stage_budgets.py --postgresql); COPY streams the values.

Gives each value what SQLAlchemy's INSERT would: the column's Python-side default when the row
has no such key, then the column type's bind processing (JSON, booleans). Constraints and
triggers hold as for an INSERT; a violation is raised as SQLAlchemy's own exception class
(`IntegrityError` for a unique key), so callers handle it as they would the INSERT's. Never
used on SQLite (no COPY; in process, its INSERTs cost no round trip), never outside a
transaction the caller commits or rolls back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    import psycopg

# Column name -> how its value is made ready for the driver: the default when absent, then the
# type's bind processor.
_Prepare = tuple[tuple[str, Callable[[Any], Any] | None, Callable[[], Any] | None], ...]


def copy_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """COPY `rows` into `table` on `conn`'s DBAPI connection (psycopg 3), in its transaction.
    Every row carries the same keys (as for an executemany)."""
    if not rows:
        return
    names = tuple(rows[0])
    prepare = _preparation(table, names, conn.dialect)
    columns = ", ".join(_quoted(conn, name) for name, _, _ in prepare)
    statement = f"COPY {_quoted(conn, table.name)} ({columns}) FROM STDIN"
    # psycopg 3, the only PostgreSQL driver the gateway names (gateway.storage.db).
    dbapi = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    try:
        with dbapi.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([_value(row, name, bind, default)
                                for name, bind, default in prepare])
    except conn.dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy would have raised it from an INSERT: IntegrityError, OperationalError...
        raise DBAPIError.instance(
            statement, None, exc, conn.dialect.loaded_dbapi.Error,
            dialect=conn.dialect,
        ) from exc


def _value(
    row: dict[str, Any],
    name: str,
    bind: Callable[[Any], Any] | None,
    default: Callable[[], Any] | None,
) -> Any:
    value = row[name] if name in row or default is None else default()
    return bind(value) if bind is not None and value is not None else value


@functools.cache
def _preparation(table: Table, names: tuple[str, ...], dialect: Dialect) -> _Prepare:
    """The columns a COPY of rows with `names` writes: those names, then every other column
    with a Python-side default (as Core's INSERT fills them); built once per table and keys."""
    out: list[tuple[str, Callable[[Any], Any] | None, Callable[[], Any] | None]] = []
    for column in table.columns:
        default = column.default
        make: Callable[[], Any] | None = None
        if column.name not in names:
            if default is None or not (default.is_scalar or default.is_callable):
                continue  # the server's own default (a sequence, server_default) or NULL
            arg = default.arg  # type: ignore[attr-defined]
            # SQLAlchemy wraps a callable default to take the execution context; none is used.
            make = (lambda v=arg: v) if default.is_scalar else (lambda f=arg: f(None))
        bind = column.type.dialect_impl(dialect).bind_processor(dialect)
        out.append((column.name, bind, make))
    unknown = set(names) - {name for name, _, _ in out}
    if unknown:
        raise KeyError(f"{table.name} has no column {sorted(unknown)}")
    return tuple(out)


def _quoted(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


__all__ = ["copy_rows"]
