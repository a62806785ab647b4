"""Emergency billing: ledger, incidents, bundles, emergency holds

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "emergency_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("signal", sa.Text(), nullable=False),
        sa.Column("requested_at", UTC_DATETIME, nullable=False),
        sa.Column("deadline", UTC_DATETIME, nullable=True),
        sa.Column("reference", sa.String(length=998), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("contact", sa.String(length=400), nullable=False),
        sa.Column("authenticated", sa.Boolean(), nullable=False),
        sa.Column("authentication", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("classified", sa.String(length=64), nullable=False),
        sa.Column("review", sa.Text(), nullable=False),
        sa.Column("terms_version", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("price_minor", sa.Integer(), nullable=False),
        sa.Column("surcharge_minor", sa.Integer(), nullable=False),
        sa.Column("after_hours", sa.Boolean(), nullable=False),
        sa.Column("after_hours_reason", sa.Text(), nullable=False),
        sa.Column("resolved_at", UTC_DATETIME, nullable=True),
        sa.Column("resolution", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_emergency_requests_ticket_id_tickets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emergency_requests")),
    )
    for column in ("ticket_id", "account_id", "status", "requested_at"):
        op.create_index(op.f(f"ix_emergency_requests_{column}"), "emergency_requests", [column])

    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=32), nullable=True),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("opened_at", UTC_DATETIME, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("evidence_reference", sa.String(length=998), nullable=False),
        sa.Column("evidence_text", sa.Text(), nullable=False),
        sa.Column("evidence_at", UTC_DATETIME, nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("authentication", sa.Text(), nullable=False),
        sa.Column("contact", sa.String(length=400), nullable=False),
        sa.Column("terms_version", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("price_minor", sa.Integer(), nullable=False),
        sa.Column("surcharge_minor", sa.Integer(), nullable=False),
        sa.Column("after_hours", sa.Boolean(), nullable=False),
        sa.Column("after_hours_reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["emergency_requests.id"],
            name=op.f("fk_incidents_request_id_emergency_requests"),
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_incidents_ticket_id_tickets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
        sa.UniqueConstraint("reference", name=op.f("uq_incidents_reference")),
        sa.UniqueConstraint("ticket_id", name=op.f("uq_incidents_ticket_id")),
    )
    op.create_index(op.f("ix_incidents_account_id"), "incidents", ["account_id"])
    op.create_index(op.f("ix_incidents_opened_at"), "incidents", ["opened_at"])

    op.create_table(
        "incident_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("emergency_ticket_id", sa.Integer(), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["emergency_ticket_id"],
            ["tickets.id"],
            name=op.f("fk_incident_links_emergency_ticket_id_tickets"),
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_incident_links_ticket_id_tickets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_links")),
        sa.UniqueConstraint("ticket_id", name=op.f("uq_incident_links_ticket_id")),
    )
    op.create_index(
        op.f("ix_incident_links_emergency_ticket_id"), "incident_links", ["emergency_ticket_id"]
    )

    op.create_table(
        "bundles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "units > 0 AND used >= 0 AND used <= units", name=op.f("ck_bundles_units")
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_bundles_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bundles")),
    )
    op.create_index(op.f("ix_bundles_account_id"), "bundles", ["account_id"])

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=True),
        sa.Column("unit_no", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"], ["bundles.id"], name=op.f("fk_ledger_entries_bundle_id_bundles")
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_ledger_entries_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("bundle_id", "unit_no", name=op.f("uq_ledger_entries_bundle_id")),
        sa.UniqueConstraint("incident_id", "kind", name=op.f("uq_ledger_entries_incident_id")),
    )
    op.create_index(op.f("ix_ledger_entries_account_id"), "ledger_entries", ["account_id"])
    op.create_index(op.f("ix_ledger_entries_at"), "ledger_entries", ["at"])


def downgrade() -> None:
    op.drop_table("ledger_entries")
    op.drop_table("bundles")
    op.drop_table("incident_links")
    op.drop_table("incidents")
    op.drop_table("emergency_requests")
