"""What an admin reads: the monthly export (exactly the incidents opened in the month, totals
that add up) and `gateway show`, which explains every hold, rejection and charge in words."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cli.main import main as gateway_main
from gateway.emergency.billing_views import export_incidents
from gateway.emergency.holds import release_expired
from gateway.emergency.ledger import add_bundle, credit_incident
from gateway.privacy.audit import Actor
from tests.billing.conftest import FRONT_DESK, SAM, TUESDAY_10, Desk, email

ADMIN = Actor("alice", "cli")


def _credit(desk: Desk, reference: str | None, at: datetime) -> None:
    with desk.gw.worker.sessions.begin() as session:
        ticket = desk.ticket(reference or "")
        assert (
            credit_incident(session, ticket.id, "duplicate", actor=ADMIN, at=at, reason="twice")
            is None
        )


def test_a_months_export_lists_exactly_the_incidents_opened_in_it_and_its_totals_add_up(
    desk_on: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = desk_on
    with desk.gw.worker.sessions.begin() as session:
        assert (
            add_bundle(session, "acme-clinic", 1, actor=ADMIN, at=datetime(2026, 10, 1, tzinfo=UTC))
            is None
        )
    instants = [
        datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC),  # October (uses the bundle unit)
        datetime(2026, 11, 1, 0, 0, tzinfo=UTC),  # the first instant of November
        TUESDAY_10,
        datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC),  # the last second of November
        datetime(2026, 12, 1, 0, 0, tzinfo=UTC),  # December
    ]
    refs = [desk.mail(email(message_id=f"<m{i}@x>"), at).reference for i, at in enumerate(instants)]
    _credit(desk, refs[2], datetime(2026, 11, 20, tzinfo=UTC))  # credited within November
    _credit(desk, refs[3], datetime(2026, 12, 2, tzinfo=UTC))  # credited after it

    since, until = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    with desk.gw.session() as session:
        export = export_incidents(session, since, until)
    assert [line.ticket for line in export.lines] == refs[1:4]
    # 00:00Z and 23:59Z are night in New York: the surcharge; 10:00 Tuesday is not.
    assert [line.charged for line in export.lines] == ["350.00", "250.00", "350.00"]
    assert [line.credited for line in export.lines] == ["0.00", "250.00", "0.00"]
    (total,) = export.totals
    assert (total.incidents, total.bundle_units) == (3, 0)
    assert total.charged_minor == sum(line.charged_minor for line in export.lines) == 95000
    assert total.credited_minor == 25000 and total.net_minor == 70000

    cli = ["--config", str(desk.gw.settings.directory), "billing", "export"]
    assert gateway_main([*cli, "--from", "2026-11-01", "--to", "2026-12-01"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    lines, totals = rows[:-1], rows[-1]
    assert [r["ticket"] for r in lines] == refs[1:4]
    assert totals["incident"] == "TOTAL" and totals["ticket"] == "3 incidents"
    for column in ("charged", "credited", "net"):
        assert f"{sum(float(r[column]) for r in lines):.2f}" == totals[column]
    assert all(float(r["charged"]) - float(r["credited"]) == float(r["net"]) for r in lines)
    assert lines[1]["evidence"].startswith("<m2@x>: I acknowledge that emergency support")

    assert (
        gateway_main([*cli, "--from", "2026-10-01", "--to", "2026-11-01", "--format", "json"]) == 0
    )
    october = json.loads(capsys.readouterr().out)
    assert [i["ticket"] for i in october["incidents"]] == refs[:1]
    assert october["incidents"][0]["bundle_unit"].startswith("bundle 1 unit 1")
    assert october["totals"] == [
        {
            "currency": "USD",
            "incidents": 1,
            "bundle_units": 1,
            "charged": "100.00",
            "credited": "0.00",
            "net": "100.00",
        }
    ]
    assert gateway_main([*cli, "--from", "2026-11-01", "--to", "November"]) == 2
    assert "--to 'November': not a date" in capsys.readouterr().err


def test_gateway_show_explains_every_hold_rejection_and_charge_in_plain_words(
    desk: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(desk.gw.settings.directory)

    def show(reference: str | None) -> str:
        assert gateway_main(["--config", config, "show", reference or ""]) == 0
        out = capsys.readouterr().out
        section = out.split("emergency and billing:\n", 1)[1].split("decisions:\n", 1)[0]
        return " ".join(section.split())

    rejected = desk.mail(email(sender=SAM, message_id="<r1@x>"), TUESDAY_10)
    unauthorised = desk.mail(email(sender=FRONT_DESK, message_id="<r2@x>"), TUESDAY_10)
    held = desk.mail(email(acknowledged=False, message_id="<h@x>"), TUESDAY_10)
    charged = desk.mail(email(message_id="<c@x>"), TUESDAY_10)
    with desk.gw.worker.sessions.begin() as session:
        assert add_bundle(session, "acme-clinic", 3, actor=ADMIN, at=TUESDAY_10) is None
    covered = desk.mail(email(message_id="<b@x>"), TUESDAY_10 + timedelta(minutes=1))
    linked = desk.sms("EMERGENCY call me", TUESDAY_10 + timedelta(minutes=2))
    expired = desk.mail(email(acknowledged=False, message_id="<x@x>"), TUESDAY_10)

    assert show(rejected.reference) == (
        "Not accepted as an emergency: plan basic does not include emergency support."
    )
    assert "is not among the authorised contacts of Acme Family Clinic" in show(
        unauthorised.reference
    )
    says = {
        held.reference: [
            "Emergency requested 2026-11-17T15:00:00Z by email (the subject marker [EMERGENCY]): "
            "pending (asked by the subject marker [EMERGENCY]",
            "without acknowledging the charge",
            "Emergency pending: the ticket keeps its place and SLA clock; the request expires "
            "unbilled at 2026-11-17T19:00:00Z unless the contact confirms.",
        ],
        charged.reference: [
            "accepted at once",
            "Incident INC-000001 opened 2026-11-17T15:00:00Z by email: acknowledged by <c@x> "
            "from dana@acme-clinic.example",
            "terms 2026-11; quoted USD 250.00; not after hours (10:00 Tue 2026-11-17 "
            "America/New_York is within business hours",
            "Ledger: charged USD 250.00 at 2026-11-17T15:00:00Z: emergency incident at the "
            "quoted price.",
        ],
        covered.reference: ["Ledger: paid by prepaid bundle #1, unit 1 of 3"],
        linked.reference: [
            "Linked to the emergency T-000005 (incident INC-000002): part of the same incident, "
            "not billed again"
        ],
    }
    for reference, sentences in says.items():
        text = show(reference)
        for sentence in sentences:
            assert sentence in text, (reference, sentence, text)
    assert show(held.reference).startswith("Emergency requested")
    release_expired(
        desk.gw.worker.sessions,
        desk.gw.settings,
        desk.runtime.policy.calendars,
        TUESDAY_10 + timedelta(hours=5),
    )
    assert (
        "expired 2026-11-17T20:00:00Z, not billed: no confirmation of the emergency charge "
        "within 4 hours"
    ) in show(expired.reference)
    _credit(desk, charged.reference, TUESDAY_10 + timedelta(days=1))
    assert (
        "Ledger: credited USD 250.00 at 2026-11-18T15:00:00Z by cli:alice: duplicate: twice."
    ) in show(charged.reference)
