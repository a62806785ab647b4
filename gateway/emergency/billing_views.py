"""Reading the emergency ledger: an account's and a ticket's billing, and the monthly export.

What this module owns
---------------------
* `account_billing` and `ticket_billing`: bundles, incidents, charges and credits as JSON-able
  dicts and readable lines (`gateway show`, `gateway billing show`, the API);
* `export_incidents` (`gateway billing export`, the API's export): one line per incident of a
  period with totals per currency, cells made safe for spreadsheets.

What it must never do
---------------------
Write anything or decide a charge: gateway/emergency/ledger.py writes the ledger.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.emergency.ledger import amount_text, entries_of, iso
from gateway.emergency.rules import money
from gateway.storage.billing_tables import (
    Bundle,
    EmergencyRequest,
    Incident,
    IncidentLink,
    LedgerEntry,
)
from gateway.storage.models import DecisionRecord, Ticket
from gateway.storage.queries import as_utc

# ---- reading -------------------------------------------------------------------------------------


def _entry_json(e: LedgerEntry) -> dict[str, Any]:
    return {
        "at": iso(e.at),
        "kind": e.kind,
        "amount": amount_text(e.amount_minor),
        "amount_minor": e.amount_minor,
        "currency": e.currency,
        "bundle": e.bundle_id,
        "unit": e.unit_no,
        "reason": e.reason,
        "actor": e.actor,
    }


def _entry_text(e: LedgerEntry) -> str:
    if e.kind == "bundle-debit":
        return f"paid by {e.reason} ({iso(e.at)})"
    if e.kind == "charge":
        return f"charged {money(e.amount_minor, e.currency)} at {iso(e.at)}: {e.reason}"
    return f"credited {money(-e.amount_minor, e.currency)} at {iso(e.at)} by {e.actor}: {e.reason}"


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
    entries = entries_of(session, [i.id for i in incidents])
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
                    "created_at": iso(b.created_at),
                    "actor": b.actor,
                    "note": b.note,
                }
                for b in bundles
            ],
        },
        "incidents": rows,
        "totals": {
            currency: {k: amount_text(v) for k, v in t.items()} for currency, t in totals.items()
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
        opened_at=iso(incident.opened_at) or "",
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
        quoted=amount_text(incident.price_minor + incident.surcharge_minor),
        bundle_unit=f"bundle {debit.bundle_id} unit {debit.unit_no}" if debit else "",
        charged=amount_text(charged),
        credited=amount_text(credited),
        net=amount_text(charged - credited),
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
            "charged": amount_text(self.charged_minor),
            "credited": amount_text(self.credited_minor),
            "net": amount_text(self.net_minor),
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
                "from": iso(self.since),
                "to": iso(self.until),
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
                charged=amount_text(t.charged_minor),
                credited=amount_text(t.credited_minor),
                net=amount_text(t.net_minor),
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
    entries = entries_of(session, [i.id for i in incidents])
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
        entries = entries_of(session, [incident.id])
        line = _line(incident, entries, "")
        quoted = incident.price_minor + incident.surcharge_minor
        explanation.append(
            f"Incident {incident.reference} opened {iso(incident.opened_at)} by {incident.channel}"
            f": acknowledged by {incident.evidence_reference} from {incident.sender} at "
            f"{iso(incident.evidence_at)} ({incident.evidence_text[:200]!r}); "
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
            "opened_at": iso(incident.opened_at),
            "channel": incident.channel,
            "evidence": {
                "reference": incident.evidence_reference,
                "text": incident.evidence_text,
                "at": iso(incident.evidence_at),
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
        "requested_at": iso(r.requested_at),
        "deadline": iso(r.deadline),
        "reference": r.reference,
        "sender": r.sender,
        "contact": r.contact,
        "authenticated": r.authenticated,
        "authentication": r.authentication,
        "reason": r.reason,
        "review": r.review or None,
        "terms_version": r.terms_version,
        "currency": r.currency,
        "price": amount_text(r.price_minor),
        "after_hours": r.after_hours,
        "after_hours_reason": r.after_hours_reason,
        "quoted": amount_text(r.price_minor + (r.surcharge_minor if r.after_hours else 0)),
        "resolved_at": iso(r.resolved_at),
        "resolution": r.resolution or None,
    }


def _request_text(r: EmergencyRequest) -> str:
    asked = f"Emergency requested {iso(r.requested_at)} by {r.channel} ({r.signal})"
    if r.status == "accepted":
        return f"{asked}: accepted at once — {r.reason}."
    held = f"{asked}: pending ({r.reason})"
    if r.status == "awaiting":
        return (
            f"{held}. Emergency pending: the ticket keeps its place and SLA clock; the request "
            f"expires unbilled at {iso(r.deadline)} unless the contact confirms."
        )
    if r.status == "confirmed":
        return f"{held}; confirmed {iso(r.resolved_at)}: {r.resolution}."
    return f"{held}; expired {iso(r.resolved_at)}, not billed: {r.resolution}."
