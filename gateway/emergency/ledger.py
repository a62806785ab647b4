"""The emergency ledger: incidents, charges, prepaid bundles, credits, and the monthly export.

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

import csv
import io
import json
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

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
from gateway.storage.models import DecisionRecord, Ticket
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


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _aware(at: datetime) -> datetime:
    """`at` in UTC (stored as is: SQLite keeps no offset); a naive time is refused."""
    if at.tzinfo is None:
        raise ValueError("times must be aware datetimes")
    return at.astimezone(UTC)


def _amount(minor: int) -> str:
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
    entries = _entries(session, [incident.id])
    done = next((e for e in entries if e.kind == "credit"), None)
    if done is not None:
        return (
            f"incident {incident.reference} was already credited at {_iso(done.at)} by "
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
                before={"charged": _amount(charged), "bundle_unit": debit is not None},
                after={
                    "credited": _amount(charged),
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


# ---- reading -------------------------------------------------------------------------------------


def bundle_balance(session: Session, account_id: str) -> int:
    """Prepaid incidents the account has left (never below zero: the check constraint)."""
    rows = session.execute(
        select(Bundle.units, Bundle.used).where(Bundle.account_id == account_id)
    ).all()
    return sum(units - used for units, used in rows)


def _entries(session: Session, incident_ids: Iterable[int]) -> list[LedgerEntry]:
    ids = list(incident_ids)
    if not ids:
        return []
    return list(
        session.execute(
            select(LedgerEntry).where(LedgerEntry.incident_id.in_(ids)).order_by(LedgerEntry.id)
        ).scalars()
    )


def _entry_json(e: LedgerEntry) -> dict[str, Any]:
    return {
        "at": _iso(e.at),
        "kind": e.kind,
        "amount": _amount(e.amount_minor),
        "amount_minor": e.amount_minor,
        "currency": e.currency,
        "bundle": e.bundle_id,
        "unit": e.unit_no,
        "reason": e.reason,
        "actor": e.actor,
    }


def _entry_text(e: LedgerEntry) -> str:
    if e.kind == "bundle-debit":
        return f"paid by {e.reason} ({_iso(e.at)})"
    if e.kind == "charge":
        return f"charged {money(e.amount_minor, e.currency)} at {_iso(e.at)}: {e.reason}"
    return f"credited {money(-e.amount_minor, e.currency)} at {_iso(e.at)} by {e.actor}: {e.reason}"


def account_billing(session: Session, account_id: str) -> dict[str, Any]:
    """An account's bundles, incidents, charges and credits (JSON-able; amounts as decimal
    strings with their currency, and in minor units)."""
    bundles = list(
        session.execute(
            select(Bundle).where(Bundle.account_id == account_id).order_by(Bundle.id)
        ).scalars()
    )
    incidents = list(
        session.execute(
            select(Incident).where(Incident.account_id == account_id).order_by(Incident.id)
        ).scalars()
    )
    entries = _entries(session, [i.id for i in incidents])
    by_incident: dict[int, list[LedgerEntry]] = {}
    for e in entries:
        by_incident.setdefault(e.incident_id, []).append(e)
    tickets = _references(session, [i.ticket_id for i in incidents])
    totals: dict[str, dict[str, int]] = {}
    rows = []
    for incident in incidents:
        mine = by_incident.get(incident.id, [])
        line = _line(incident, mine, tickets.get(incident.ticket_id, ""))
        rows.append(
            {
                "incident": incident.reference,
                "ticket": line.ticket,
                "opened_at": line.opened_at,
                "channel": incident.channel,
                "after_hours": incident.after_hours,
                "paid_by": "bundle" if line.bundle_unit else "charge",
                "bundle_unit": line.bundle_unit or None,
                "currency": incident.currency,
                "charged": line.charged,
                "credited": line.credited,
                "net": line.net,
                "ledger": [_entry_json(e) for e in mine],
            }
        )
        total = totals.setdefault(incident.currency, {"charged": 0, "credited": 0, "net": 0})
        total["charged"] += line.charged_minor
        total["credited"] += line.credited_minor
        total["net"] += line.net_minor
    purchased = sum(b.units for b in bundles if b.source == "purchase")
    returned = sum(b.units for b in bundles if b.source == "credit")
    used = sum(b.used for b in bundles)
    return {
        "account": account_id,
        "bundle": {
            "purchased": purchased,
            "returned": returned,
            "used": used,
            "remaining": purchased + returned - used,
            "bundles": [
                {
                    "id": b.id,
                    "source": b.source,
                    "units": b.units,
                    "used": b.used,
                    "created_at": _iso(b.created_at),
                    "actor": b.actor,
                    "note": b.note,
                }
                for b in bundles
            ],
        },
        "incidents": rows,
        "totals": {
            currency: {k: _amount(v) for k, v in t.items()} for currency, t in totals.items()
        },
    }


def _references(session: Session, ticket_ids: Iterable[int]) -> dict[int, str]:
    ids = list(set(ticket_ids))
    if not ids:
        return {}
    rows = session.execute(select(Ticket.id, Ticket.reference).where(Ticket.id.in_(ids))).all()
    return {i: r or f"#{i}" for i, r in rows}


# ---- the export ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportLine:
    """One incident of an export, with what it cost."""

    incident: str
    opened_at: str
    account: str
    ticket: str
    channel: str
    contact: str
    sender: str
    evidence: str
    authentication: str
    terms_version: str
    after_hours: bool
    currency: str
    quoted: str
    bundle_unit: str  # "bundle 3 unit 7", or "" when charged
    charged: str
    credited: str
    net: str
    charged_minor: int
    credited_minor: int
    net_minor: int


def _line(
    incident: Incident, entries: list[LedgerEntry], ticket: str, until: datetime | None = None
) -> ExportLine:
    kept = [e for e in entries if until is None or _utc(e.at) < until]
    charged = sum(e.amount_minor for e in kept if e.kind == "charge")
    credited = -sum(e.amount_minor for e in kept if e.kind == "credit")
    debit = next((e for e in kept if e.kind == "bundle-debit"), None)
    return ExportLine(
        incident=incident.reference or f"#{incident.id}",
        opened_at=_iso(incident.opened_at) or "",
        account=incident.account_id,
        ticket=ticket,
        channel=incident.channel,
        contact=incident.contact,
        sender=incident.sender,
        evidence=f"{incident.evidence_reference}: {incident.evidence_text[:200]}",
        authentication=incident.authentication,
        terms_version=incident.terms_version,
        after_hours=incident.after_hours,
        currency=incident.currency,
        quoted=_amount(incident.price_minor + incident.surcharge_minor),
        bundle_unit=f"bundle {debit.bundle_id} unit {debit.unit_no}" if debit else "",
        charged=_amount(charged),
        credited=_amount(credited),
        net=_amount(charged - credited),
        charged_minor=charged,
        credited_minor=credited,
        net_minor=charged - credited,
    )


def _utc(value: datetime) -> datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted.astimezone(UTC)


@dataclass(frozen=True)
class Totals:
    currency: str
    incidents: int
    bundle_units: int
    charged_minor: int
    credited_minor: int
    net_minor: int

    def json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "incidents": self.incidents,
            "bundle_units": self.bundle_units,
            "charged": _amount(self.charged_minor),
            "credited": _amount(self.credited_minor),
            "net": _amount(self.net_minor),
        }


@dataclass(frozen=True)
class BillingExport:
    """Every incident opened in [since, until), one line each, with totals per currency.
    Credits recorded before `until` count, so an export of a closed month never changes."""

    since: datetime
    until: datetime
    lines: tuple[ExportLine, ...]

    @property
    def totals(self) -> tuple[Totals, ...]:
        out: dict[str, Totals] = {}
        for line in self.lines:
            t = out.get(line.currency) or Totals(line.currency, 0, 0, 0, 0, 0)
            out[line.currency] = Totals(
                line.currency,
                t.incidents + 1,
                t.bundle_units + (1 if line.bundle_unit else 0),
                t.charged_minor + line.charged_minor,
                t.credited_minor + line.credited_minor,
                t.net_minor + line.net_minor,
            )
        return tuple(out[c] for c in sorted(out))

    def to_json(self) -> str:
        fields = [f for f in ExportLine.__dataclass_fields__ if not f.endswith("_minor")]
        return json.dumps(
            {
                "from": _iso(self.since),
                "to": _iso(self.until),
                "incidents": [{f: asdict(line)[f] for f in fields} for line in self.lines],
                "totals": [t.json() for t in self.totals],
            },
            indent=2,
        )

    def to_csv(self) -> str:
        """One row per incident, then one TOTAL row per currency (quoted like any CSV)."""
        fields = [f for f in ExportLine.__dataclass_fields__ if not f.endswith("_minor")]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(fields)
        for line in self.lines:
            row = asdict(line)
            writer.writerow([_cell(row[f]) for f in fields])
        for t in self.totals:
            total = {f: "" for f in fields}
            total.update(
                incident="TOTAL",
                currency=t.currency,
                bundle_unit=f"{t.bundle_units} bundle units",
                charged=_amount(t.charged_minor),
                credited=_amount(t.credited_minor),
                net=_amount(t.net_minor),
                ticket=f"{t.incidents} incidents",
            )
            writer.writerow([total[f] for f in fields])
        return buffer.getvalue()


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    # A cell a spreadsheet would run as a formula (CSV injection) is quoted as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_amount(text) else text


def _is_amount(text: str) -> bool:
    return text.lstrip("-").replace(".", "", 1).isdigit()


def export_incidents(session: Session, since: datetime, until: datetime) -> BillingExport:
    """The incidents opened in [since, until) (aware datetimes), oldest first."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be aware datetimes")
    start, end = since.astimezone(UTC), until.astimezone(UTC)
    incidents = list(
        session.execute(
            select(Incident)
            .where(Incident.opened_at >= start, Incident.opened_at < end)
            .order_by(Incident.opened_at, Incident.id)
        ).scalars()
    )
    entries = _entries(session, [i.id for i in incidents])
    by_incident: dict[int, list[LedgerEntry]] = {}
    for e in entries:
        by_incident.setdefault(e.incident_id, []).append(e)
    tickets = _references(session, [i.ticket_id for i in incidents])
    lines = tuple(
        _line(i, by_incident.get(i.id, []), tickets.get(i.ticket_id, ""), end) for i in incidents
    )
    return BillingExport(start, end, lines)


# ---- one ticket ----------------------------------------------------------------------------------


def ticket_billing(session: Session, ticket_id: int) -> dict[str, Any]:
    """A ticket's emergency requests, incident, ledger and link, with `explanation`: every hold,
    rejection and charge in plain words (what `gateway show` prints)."""
    explanation: list[str] = []
    rejected = session.execute(
        select(DecisionRecord.text)
        .where(
            DecisionRecord.ticket_id == ticket_id,
            DecisionRecord.stage == "emergency",
            DecisionRecord.code.in_(("plan", "not-authorised")),
        )
        .order_by(DecisionRecord.id)
    ).scalars()
    for text in rejected:
        explanation.append(f"Not accepted as an emergency: {text}.")
    requests = list(
        session.execute(
            select(EmergencyRequest)
            .where(EmergencyRequest.ticket_id == ticket_id)
            .order_by(EmergencyRequest.id)
        ).scalars()
    )
    for r in requests:
        explanation.append(_request_text(r))
    incident = session.execute(
        select(Incident).where(Incident.ticket_id == ticket_id)
    ).scalar_one_or_none()
    incident_json: dict[str, Any] | None = None
    if incident is not None:
        entries = _entries(session, [incident.id])
        line = _line(incident, entries, "")
        quoted = incident.price_minor + incident.surcharge_minor
        explanation.append(
            f"Incident {incident.reference} opened {_iso(incident.opened_at)} by {incident.channel}"
            f": acknowledged by {incident.evidence_reference} from {incident.sender} at "
            f"{_iso(incident.evidence_at)} ({incident.evidence_text[:200]!r}); "
            f"{incident.authentication}; contact {incident.contact}; terms "
            f"{incident.terms_version}; quoted {money(quoted, incident.currency)}; "
            f"{'after hours' if incident.after_hours else 'not after hours'} "
            f"({incident.after_hours_reason})."
        )
        explanation.extend(f"Ledger: {_entry_text(e)}." for e in entries)
        linked = session.execute(
            select(Ticket.reference)
            .join(IncidentLink, IncidentLink.ticket_id == Ticket.id)
            .where(IncidentLink.emergency_ticket_id == ticket_id)
            .order_by(Ticket.id)
        ).scalars()
        incident_json = {
            "reference": incident.reference,
            "opened_at": _iso(incident.opened_at),
            "channel": incident.channel,
            "evidence": {
                "reference": incident.evidence_reference,
                "text": incident.evidence_text,
                "at": _iso(incident.evidence_at),
                "sender": incident.sender,
                "authentication": incident.authentication,
                "contact": incident.contact,
            },
            "terms_version": incident.terms_version,
            "currency": incident.currency,
            "quoted": line.quoted,
            "after_hours": incident.after_hours,
            "after_hours_reason": incident.after_hours_reason,
            "paid_by": "bundle" if line.bundle_unit else "charge",
            "charged": line.charged,
            "credited": line.credited,
            "net": line.net,
            "ledger": [_entry_json(e) for e in entries],
            "linked_tickets": list(linked),
        }
    link = session.execute(
        select(IncidentLink).where(IncidentLink.ticket_id == ticket_id)
    ).scalar_one_or_none()
    link_json: dict[str, Any] | None = None
    if link is not None:
        target = session.get(Ticket, link.emergency_ticket_id)
        target_incident = session.execute(
            select(Incident.reference).where(Incident.ticket_id == link.emergency_ticket_id)
        ).scalar_one_or_none()
        link_json = {
            "ticket": target.reference if target else None,
            "incident": target_incident,
            "reason": link.reason,
        }
        explanation.append(
            f"Linked to the emergency {link_json['ticket']}"
            + (f" (incident {target_incident})" if target_incident else "")
            + f": part of the same incident, not billed again ({link.reason})."
        )
    return {
        "requests": [_request_json(r) for r in requests],
        "incident": incident_json,
        "linked_to": link_json,
        "explanation": explanation,
    }


def _request_json(r: EmergencyRequest) -> dict[str, Any]:
    return {
        "status": r.status,
        "channel": r.channel,
        "signal": r.signal,
        "requested_at": _iso(r.requested_at),
        "deadline": _iso(r.deadline),
        "reference": r.reference,
        "sender": r.sender,
        "contact": r.contact,
        "authenticated": r.authenticated,
        "authentication": r.authentication,
        "reason": r.reason,
        "review": r.review or None,
        "terms_version": r.terms_version,
        "currency": r.currency,
        "price": _amount(r.price_minor),
        "after_hours": r.after_hours,
        "after_hours_reason": r.after_hours_reason,
        "quoted": _amount(r.price_minor + (r.surcharge_minor if r.after_hours else 0)),
        "resolved_at": _iso(r.resolved_at),
        "resolution": r.resolution or None,
    }


def _request_text(r: EmergencyRequest) -> str:
    asked = f"Emergency requested {_iso(r.requested_at)} by {r.channel} ({r.signal})"
    if r.status == "accepted":
        return f"{asked}: accepted at once — {r.reason}."
    held = f"{asked}: held ({r.reason})"
    if r.status == "awaiting":
        return (
            f"{held}. Awaiting acknowledgement: no SLA clock yet; released at its classified "
            f"severity, unbilled, at {_iso(r.deadline)} unless the contact confirms."
        )
    if r.status == "confirmed":
        return f"{held}; confirmed {_iso(r.resolved_at)}: {r.resolution}."
    return f"{held}; released {_iso(r.resolved_at)}, not billed: {r.resolution}."
