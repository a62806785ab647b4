"""A ticket's reference (`T-000123`), made from its id: the one place that knows its format.

Owns the format twice over, kept side by side so they cannot drift: in Python for whoever knows
the id (persist, `find_ticket`), and as SQL for an INSERT that takes the id from PostgreSQL's
sequence and writes the reference in the same statement (issue 20 outcome 1: one round trip per
new ticket, not an INSERT and an UPDATE). Never parses references out of text (threading does).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Integer, String, cast, func, literal

PREFIX = "T-"
DIGITS = 6  # zero-padded to at least this many; longer ids keep every digit


def reference(ticket_id: int) -> str:
    return f"{PREFIX}{ticket_id:0{DIGITS}d}"


def reference_sql(ticket_id: ColumnElement[int]) -> ColumnElement[str]:
    """`reference` in SQL (PostgreSQL): lpad never cuts, since it pads to the longer of
    `DIGITS` and the id's own length."""
    digits = cast(ticket_id, String)
    width = func.greatest(literal(DIGITS, Integer), func.length(digits))
    return literal(PREFIX, String) + func.lpad(digits, width, "0")
