"""Tables of the agents' side: the append-only audit log and API bookkeeping.

Shares `Base` (gateway.storage.base) with gateway.storage.models, which imports this module at
its end so Alembic sees every table; never imports models back.
Rows of `audit_log` are only ever inserted: a correction is a new row, never an UPDATE.
`ticket_links` records an agent's merge or duplicate mark (gateway/api/merging.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.storage.base import Base, UTCDateTime


class AuditEntry(Base):
    """One action of an agent or admin, through the API or the CLI: who, what, when, and the
    state before and after. Billing disputes and privacy requests are answered from here."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # token name ("api:alice") or "cli:<user>"
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. ticket.status
    target: Mapped[str] = mapped_column(String(128), default="", index=True)  # e.g. T-000123
    before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    via: Mapped[str] = mapped_column(String(16), default="cli")  # cli | api


class TicketLink(Base):
    """An agent folded one ticket into another: `merged_into` (its messages moved to the other
    ticket) or `duplicate_of` (closed as the same request, its messages kept). One row per
    folded ticket: a ticket is merged or marked duplicate at most once."""

    __tablename__ = "ticket_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), unique=True)
    other_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # merged_into | duplicate_of
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
