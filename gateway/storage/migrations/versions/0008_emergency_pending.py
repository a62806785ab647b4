"""An emergency request awaiting confirmation marks its ticket instead of holding it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 22:30:00

Issue 17 item 1: a pending confirmation is a state of the emergency request, not of the ticket.
Tickets held "awaiting acknowledgement" by an open request become unheld tickets with the
`emergency_pending` mark; those without due times get them when the request is confirmed or
expires (gateway/emergency/holds.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN on both databases: SQLite's batch mode would copy and drop `tickets`,
    # which the rows of other tables referencing it forbid.
    op.add_column(
        "tickets",
        sa.Column("emergency_pending", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute(
        "UPDATE tickets SET emergency_pending = held, held = false, hold_reason = '' "
        "WHERE held AND EXISTS (SELECT 1 FROM emergency_requests r "
        "WHERE r.ticket_id = tickets.id AND r.status = 'awaiting')"
    )


def downgrade() -> None:
    op.execute("UPDATE tickets SET held = true WHERE emergency_pending")
    # SQLite 3.35+ and PostgreSQL both drop a column in place.
    op.execute("ALTER TABLE tickets DROP COLUMN emergency_pending")
