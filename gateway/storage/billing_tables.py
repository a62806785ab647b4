"""Tables of emergency billing: emergency requests, incidents, the append-only ledger, bundles.

Shares `Base` (gateway.storage.base) with gateway.storage.models, which imports this module at
its end so Alembic sees every table; never imports models back.
Rows of `ledger_entries` are only ever inserted: a correction (a credit) is a new row, never an
UPDATE or a DELETE. Two unique constraints make the money rules hold in the database itself,
whatever the code above does: at most one entry of each kind per incident (one charge, one
bundle debit, one credit), and no bundle unit debited twice (`bundle_id, unit_no`).
`bundles.used` is the one counter that changes; it is only changed under the bundle's row lock
and always equals the number of debits of that bundle. Incidents are unique per ticket.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.storage.base import Base, UTCDateTime

# Requests that make their ticket an emergency another ticket may join as part of its incident
# (automatically for the same contact, or by an agent): pending, accepted or confirmed.
JOINABLE_REQUEST_STATUSES = ("awaiting", "accepted", "confirmed")


class EmergencyRequest(Base):
    """A request for emergency support on a ticket: the evidence of the ask and the price
    quoted. `awaiting` while the customer's acknowledgement is pending (the ticket keeps its
    place; worker 0 expires the request at `deadline`); then `confirmed` or `expired`;
    `accepted` when acknowledged at once."""

    __tablename__ = "emergency_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(
        String(16), index=True
    )  # awaiting|accepted|confirmed|expired
    channel: Mapped[str] = mapped_column(String(16))  # email | sms | voice
    signal: Mapped[str] = mapped_column(Text)  # how it asked, in words
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reference: Mapped[str] = mapped_column(String(998))  # Message-ID, MessageSid or CallSid
    text: Mapped[str] = mapped_column(Text)
    sender: Mapped[str] = mapped_column(String(320))
    contact: Mapped[str] = mapped_column(String(400))
    authenticated: Mapped[bool] = mapped_column(Boolean)
    authentication: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)  # why held or accepted
    classified: Mapped[str] = mapped_column(String(64))  # the classifier's level
    review: Mapped[str] = mapped_column(Text, default="")  # why an agent should review it
    terms_version: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3))
    price_minor: Mapped[int] = mapped_column(Integer)
    surcharge_minor: Mapped[int] = mapped_column(Integer)  # applied only when after_hours
    after_hours: Mapped[bool] = mapped_column(Boolean)
    after_hours_reason: Mapped[str] = mapped_column(Text)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution: Mapped[str] = mapped_column(Text, default="")


class Incident(Base):
    """One billable emergency: created when the charge is acknowledged, once per ticket, with
    the evidence it rests on (DESIGN promise 5). Never updated; credits are ledger rows."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str | None] = mapped_column(String(32), unique=True)  # INC-000001
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), unique=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("emergency_requests.id"))
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    channel: Mapped[str] = mapped_column(String(16))
    evidence_reference: Mapped[str] = mapped_column(String(998))
    evidence_text: Mapped[str] = mapped_column(Text)
    evidence_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sender: Mapped[str] = mapped_column(String(320))
    authentication: Mapped[str] = mapped_column(Text)
    contact: Mapped[str] = mapped_column(String(400))
    terms_version: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3))
    price_minor: Mapped[int] = mapped_column(Integer)  # as quoted
    surcharge_minor: Mapped[int] = mapped_column(Integer)  # applied (0 within hours)
    after_hours: Mapped[bool] = mapped_column(Boolean)
    after_hours_reason: Mapped[str] = mapped_column(Text)


class IncidentLink(Base):
    """A ticket that is part of another ticket's emergency (an SMS or voicemail from the same
    account within the incident window): shown as linked, never billed."""

    __tablename__ = "incident_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), unique=True)
    emergency_ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)


class Bundle(Base):
    """Prepaid incidents of an account ("Season Ticket"): bought (`purchase`), or one unit
    given back when an agent credits an incident a bundle paid for (`credit`)."""

    __tablename__ = "bundles"
    __table_args__ = (CheckConstraint("units > 0 AND used >= 0 AND used <= units", name="units"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    units: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(16))  # purchase | credit
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(Text, default="")


class LedgerEntry(Base):
    """One money movement of an incident. Append-only: `charge` (amount > 0), `bundle-debit`
    (one unit, amount 0), `credit` (amount <= 0, reversing the charge; a debited unit comes
    back as a new `credit` bundle)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("incident_id", "kind"),
        UniqueConstraint("bundle_id", "unit_no"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"))
    kind: Mapped[str] = mapped_column(String(16))  # charge | bundle-debit | credit
    amount_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    bundle_id: Mapped[int | None] = mapped_column(ForeignKey("bundles.id"))
    unit_no: Mapped[int | None] = mapped_column(Integer)  # 1..units of that bundle
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))


__all__ = ["Base", "Bundle", "EmergencyRequest", "Incident", "IncidentLink", "LedgerEntry"]
