"""The API's calls into emergency billing (`gateway.emergency.ledger` and
`gateway.emergency.billing_views`, issue 7).

Owns the three touch points and their translation to the API: a ticket's billing for the detail
view (`ticket_billing`), the credit a merge or duplicate mark asks for (`credit_for_fold`, in the
caller's transaction; billing's rules decide whether anything was billed to credit) and the
incident export (`export_incidents`, JSON lines plus totals, or billing's own CSV). Never decides
what is billed or credited: gateway/emergency/ledger.py owns those rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from fastapi.encoders import jsonable_encoder
from sqlalchemy.orm import Session

from gateway.emergency import billing_views
from gateway.emergency import ledger as billing
from gateway.privacy.audit import Actor


@dataclass(frozen=True)
class Credit:
    """What billing did about a folded ticket: credited its incident, or why not."""

    credited: bool
    note: str


def ticket_billing(session: Session, ticket_id: int) -> dict[str, Any]:
    data: dict[str, Any] = jsonable_encoder(billing_views.ticket_billing(session, ticket_id))
    return data


def credit_for_fold(
    session: Session, ticket_id: int, kind: str, *, actor: Actor, at: datetime, reason: str
) -> Credit:
    """Billing's credit for a merged (`merged`) or duplicate (`duplicate`) ticket."""
    why_not = billing.credit_incident(session, ticket_id, kind, actor=actor, at=at, reason=reason)
    if why_not is None:
        return Credit(True, "its emergency incident was credited")
    return Credit(False, why_not)


@dataclass(frozen=True)
class Export:
    lines: list[dict[str, Any]]
    totals: list[dict[str, Any]]
    csv: str


def export_incidents(session: Session, since: datetime, until: datetime) -> Export:
    found = billing_views.export_incidents(session, since, until)
    lines = [
        {k: v for k, v in asdict(line).items() if not k.endswith("_minor")} for line in found.lines
    ]
    return Export(lines=lines, totals=[t.json() for t in found.totals], csv=found.to_csv())
