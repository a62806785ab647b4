"""The emergency ledger: incidents, charges, prepaid bundles and credits (reading them, and the
monthly export, are gateway/emergency/billing_views.py).

Owns the money rules of emergency support (issue 7, DESIGN promise 5):
* an incident exists only with the evidence of its acknowledgement (channel, message or call
  id, exact text or digit, time, sender, authentication, contact, terms version, price quoted,
  after-hours flag), and at most once per ticket;
* a prepaid bundle unit pays for it when the account has one left — one unit per incident,
  never below zero, never twice, also with several workers or instances at once: the account's
  bundle rows are locked `SELECT ... FOR UPDATE` on PostgreSQL, and on SQLite every worker
  transaction takes the write lock up front (BEGIN IMMEDIATE), which serialises debits; the
  unique (bundle_id, unit_no) and (incident_id, kind) constraints back both in the database;
* otherwise the plan's quoted price is charged; the after-hours surcharge is charged either way
  (a bundle covers the incident, not the surcharge);
* corrections are new rows: a credit reverses an incident's charge, and a bundle unit it used
  comes back as a new one-unit bundle. `bundles.used` is the only value ever changed, under its
  row lock, and always equals the number of debits of that bundle.
Agent and admin actions (bundle purchases, credits) are audited in the same transaction.

Never decides whether something is an emergency (gateway/emergency/rules.py), never commits (every
function works in the caller's transaction), never reads a clock (`at` is the caller's).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.emergency.rules import Evidence, Quote, money
from gateway.privacy.audit import Actor, record_action
from gateway.storage.billing_tables import (
    Bundle,
    EmergencyRequest,
    Incident,
    IncidentLink,
    LedgerEntry,
)
from gateway.storage.models import Ticket
from gateway.storage.queries import as_utc

CreditKind = Literal["duplicate", "merged", "our-fault"]
CREDIT_KINDS: tuple[str, ...] = ("duplicate", "merged", "our-fault")
# Who the ledger names when the pipeline records an incident (agents are named by Actor.label).
GATEWAY_ACTOR = "gateway"
# The most units one purchase may add: a typo of 1000 instead of 10 should not pass silently.
MAX_BUNDLE_UNITS = 500


@dataclass(frozen=True)
class Recorded:
    """What `record_incident` did, with the billing in words for the customer's message."""

    incident: str  # INC-000001
    created: bool
    paid_by: Literal["bundle", "charge", "none"]
    billing: str


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _aware(at: datetime) -> datetime:
    """`at` in UTC (stored as is: SQLite keeps no offset); a naive time is refused."""
    if at.tzinfo is None:
        raise ValueError("times must be aware datetimes")
    return at.astimezone(UTC)


def amount_text(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


# ---- incidents -----------------------------------------------------------------------------------


def record_incident(
    session: Session,
    *,
    ticket: Ticket,
    evidence: Evidence,
    quote: Quote,
    at: datetime,
    request: EmergencyRequest | None = None,
) -> Recorded:
    """Open the incident of an acknowledged emergency on `ticket` and bill it: one bundle unit
    when the account has one left, else the quoted price; the after-hours surcharge either way.
    A ticket already holding an incident gets nothing new (one incident, billed once)."""
    at = _aware(at)
    existing = session.execute(
        select(Incident).where(Incident.ticket_id == ticket.id)
    ).scalar_one_or_none()
    if existing is not None:
        return Recorded(
            existing.reference or "", False, "none", "It is part of an incident already billed."
        )
    incident = Incident(
        ticket_id=ticket.id,
        request_id=request.id if request is not None else None,
        account_id=ticket.account_id,
        opened_at=at,
        channel=evidence.channel,
        evidence_reference=evidence.reference[:998],
        evidence_text=evidence.text,
        evidence_at=evidence.at,
        sender=evidence.sender[:320],
        authentication=evidence.authentication,
        contact=evidence.contact[:400],
        terms_version=quote.terms_version[:64],
        currency=quote.currency,
        price_minor=quote.price_minor,
        surcharge_minor=quote.applied_surcharge_minor,
        after_hours=quote.after_hours,
        after_hours_reason=quote.after_hours_reason,
    )
    session.add(incident)
    session.flush()
    incident.reference = f"INC-{incident.id:06d}"
    surcharge = quote.applied_surcharge_minor
    bundle = _take_unit(session, ticket.account_id)
    if bundle is not None:
        bundle.used += 1
        unit = bundle.used
        session.add(
            _entry(
                incident,
                "bundle-debit",
                0,
                at,
                f"prepaid bundle #{bundle.id}, unit {unit} of {bundle.units}",
                bundle_id=bundle.id,
                unit_no=unit,
            )
        )
        if surcharge:
            session.add(
                _entry(
                    incident,
                    "charge",
                    surcharge,
                    at,
                    f"after-hours surcharge: {quote.after_hours_reason}",
                )
            )
        left = bundle_balance(session, ticket.account_id)
        plural = "s" if left != 1 else ""
        text = f"It is covered by your prepaid bundle ({left} incident{plural} left)."
        if surcharge:
            text += f" The after-hours surcharge of {money(surcharge, quote.currency)} is charged."
        session.flush()
        return Recorded(incident.reference, True, "bundle", text)
    why = "emergency incident at the quoted price"
    if surcharge:
        why += f" + after-hours surcharge ({quote.after_hours_reason})"
    session.add(_entry(incident, "charge", quote.total_minor, at, why))
    session.flush()
    return Recorded(
        incident.reference,
        True,
        "charge",
        f"It is charged {quote.text()} as quoted (terms {quote.terms_version}).",
    )


def _take_unit(session: Session, account_id: str) -> Bundle | None:
    """The account's oldest bundle with a unit left, locked for this transaction.

    Every bundle of the account with units left is locked (no LIMIT: PostgreSQL applies LIMIT
    before re-checking a row that changed while we waited for its lock, and could then miss a
    bundle that still has units). A second transaction waits here until the first commits, then
    sees the updated `used` (populate_existing: never a value cached in this session)."""
    rows = (
        session.execute(
            select(Bundle)
            .where(Bundle.account_id == account_id, Bundle.used < Bundle.units)
            .order_by(Bundle.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    return next((b for b in rows if b.used < b.units), None)


def _entry(
    incident: Incident,
    kind: str,
    amount: int,
    at: datetime,
    reason: str,
    *,
    actor: str = GATEWAY_ACTOR,
    bundle_id: int | None = None,
    unit_no: int | None = None,
) -> LedgerEntry:
    return LedgerEntry(
        at=at,
        account_id=incident.account_id,
        incident_id=incident.id,
        kind=kind,
        amount_minor=amount,
        currency=incident.currency,
        bundle_id=bundle_id,
        unit_no=unit_no,
        reason=reason,
        actor=actor[:128],
    )


def link_ticket(
    session: Session, ticket: Ticket, emergency_ticket_id: int, at: datetime, reason: str
) -> None:
    """Record `ticket` as part of another ticket's emergency (never billed); once per ticket."""
    found = session.execute(
        select(IncidentLink.id).where(IncidentLink.ticket_id == ticket.id)
    ).first()
    if found is None:
        session.add(
            IncidentLink(
                ticket_id=ticket.id, emergency_ticket_id=emergency_ticket_id, at=at, reason=reason
            )
        )


# ---- agents' and admins' actions -----------------------------------------------------------------


def credit_incident(
    session: Session,
    ticket_id: int,
    kind: str,
    *,
    actor: Actor,
    at: datetime,
    reason: str,
) -> str | None:
    """Credit the incident of ticket `ticket_id` because it is a duplicate, was merged, or was
    our fault: a new ledger row reversing its charge, and a new one-unit bundle giving back a
    unit it used. Audited. None on success, else why not in plain words."""
    at = _aware(at)
    if kind not in CREDIT_KINDS:
        return f"unknown credit kind {kind!r}: use one of {', '.join(CREDIT_KINDS)}"
    if not reason.strip():
        return "a credit needs a reason"
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        return f"no ticket with id {ticket_id}"
    incident = session.execute(
        select(Incident).where(Incident.ticket_id == ticket_id).with_for_update()
    ).scalar_one_or_none()
    if incident is None:
        link = session.execute(
            select(IncidentLink).where(IncidentLink.ticket_id == ticket_id)
        ).scalar_one_or_none()
        if link is not None:
            target = session.get(Ticket, link.emergency_ticket_id)
            return (
                f"{ticket.reference} is linked to the emergency "
                f"{target.reference if target else '?'} and was never billed: credit that "
                "ticket's incident instead"
            )
        return f"{ticket.reference} has no incident: nothing was billed"
    entries = entries_of(session, [incident.id])
    done = next((e for e in entries if e.kind == "credit"), None)
    if done is not None:
        return (
            f"incident {incident.reference} was already credited at {iso(done.at)} by "
            f"{done.actor}: {done.reason}"
        )
    charged = sum(e.amount_minor for e in entries if e.kind == "charge")
    debit = next((e for e in entries if e.kind == "bundle-debit"), None)
    try:
        with session.begin_nested():
            session.add(
                _entry(incident, "credit", -charged, at, f"{kind}: {reason}", actor=actor.label)
            )
            if debit is not None:
                session.add(
                    Bundle(
                        account_id=incident.account_id,
                        units=1,
                        used=0,
                        source="credit",
                        incident_id=incident.id,
                        created_at=at,
                        actor=actor.label[:128],
                        note=f"unit {debit.unit_no} of bundle #{debit.bundle_id} given back "
                        f"({kind}: {reason})",
                    )
                )
            record_action(
                session,
                actor,
                "billing.credit",
                incident.reference or "",
                at=at,
                before={"charged": amount_text(charged), "bundle_unit": debit is not None},
                after={
                    "credited": amount_text(charged),
                    "currency": incident.currency,
                    "unit_returned": debit is not None,
                    "ticket": ticket.reference,
                    "kind": kind,
                },
                reason=reason,
            )
            session.flush()
    except IntegrityError:
        # Another agent credited it between our check and our insert: (incident_id, kind).
        return f"incident {incident.reference} was just credited by someone else"
    return None


def add_bundle(
    session: Session,
    account_id: str,
    units: int,
    *,
    actor: Actor,
    at: datetime,
    note: str = "",
    known_accounts: Collection[str] | None = None,
) -> str | None:
    """Add a prepaid bundle of `units` incidents to `account_id`. Audited. None on success,
    else why not. `known_accounts`: when given, the account must be one of them."""
    at = _aware(at)
    if not account_id.strip():
        return "an account id is needed"
    if known_accounts is not None and account_id not in known_accounts:
        return f"unknown account {account_id!r} (not in customers.toml or the imported customers)"
    if not 1 <= units <= MAX_BUNDLE_UNITS:
        return f"units must be from 1 to {MAX_BUNDLE_UNITS}, not {units}"
    before = bundle_balance(session, account_id)
    bundle = Bundle(
        account_id=account_id,
        units=units,
        used=0,
        source="purchase",
        incident_id=None,
        created_at=at,
        actor=actor.label[:128],
        note=note,
    )
    session.add(bundle)
    session.flush()
    record_action(
        session,
        actor,
        "billing.bundle-add",
        account_id,
        at=at,
        before={"remaining": before},
        after={"remaining": before + units, "bundle": bundle.id, "units": units},
        reason=note,
    )
    return None


def bundle_balance(session: Session, account_id: str) -> int:
    """Prepaid incidents the account has left (never below zero: the check constraint)."""
    rows = session.execute(
        select(Bundle.units, Bundle.used).where(Bundle.account_id == account_id)
    ).all()
    return sum(units - used for units, used in rows)


def entries_of(session: Session, incident_ids: Iterable[int]) -> list[LedgerEntry]:
    ids = list(incident_ids)
    if not ids:
        return []
    return list(
        session.execute(
            select(LedgerEntry).where(LedgerEntry.incident_id.in_(ids)).order_by(LedgerEntry.id)
        ).scalars()
    )

