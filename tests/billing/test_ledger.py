"""The ledger: prepaid bundles debited one unit per incident, never below zero and never twice
(also with two workers at once), the quoted price charged once the bundle is empty, and credits
as new rows. On SQLite and PostgreSQL where the database does the work."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from gateway.cli.main import main as gateway_main
from gateway.emergency.billing_views import account_billing
from gateway.emergency.ledger import (
    add_bundle,
    bundle_balance,
    credit_incident,
    record_incident,
)
from gateway.emergency.rules import Evidence, Quote, prepaid_note
from gateway.intake.spool import Envelope
from gateway.pipeline import Job, JobResult, process_batch
from gateway.privacy.audit import Actor, audit_entries
from gateway.storage.billing_tables import Bundle, LedgerEntry
from gateway.storage.db import make_engine, session_factory
from gateway.storage.models import Ticket
from tests.billing.conftest import DANA, NY, TUESDAY_10, Desk, email
from tests.helpers import Gateway, wait_for

ADMIN = Actor("alice", "cli")


def test_a_bundle_of_ten_pays_ten_incidents_and_the_eleventh_is_charged(
    desk_on: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = desk_on
    config = str(desk.gw.settings.directory)
    cli = ["--config", config, "billing"]
    assert gateway_main([*cli, "bundle", "add", "acme-clinic", "10", "--actor", "alice"]) == 0
    assert capsys.readouterr().out == "acme-clinic: added 10 prepaid incidents; 10 left\n"
    for i in range(11):
        desk.mail(email(message_id=f"<e{i}@acme>"), TUESDAY_10 + timedelta(minutes=i))
    incidents = desk.incidents()
    assert len(incidents) == 11
    ledger = desk.ledger()
    (bundle,) = desk.bundles()
    assert [(e.kind, e.bundle_id, e.unit_no, e.amount_minor) for e in ledger] == [
        *(("bundle-debit", bundle.id, unit, 0) for unit in range(1, 11)),
        ("charge", None, None, 25000),
    ]
    assert [e.incident_id for e in ledger] == [i.id for i in incidents]
    assert (bundle.units, bundle.used) == (10, 10)
    accepted = [r for r in desk.outbox() if r.kind == "emergency-accepted"]
    assert "(9 incidents left)" in accepted[0].body and "(0 incidents left)" in accepted[9].body
    assert "It is charged USD 250.00 as quoted" in accepted[10].body

    assert gateway_main([*cli, "show", "acme-clinic"]) == 0
    shown = capsys.readouterr().out
    assert "prepaid bundle: 10 bought, 0 given back by credits, 10 used, 0 left" in shown
    assert "total USD: charged 250.00, credited 0.00, net 250.00" in shown
    with desk.gw.session() as session:
        (entry,) = audit_entries(session, target="acme-clinic")
        assert (entry.action, entry.actor, entry.after["remaining"]) == (
            "billing.bundle-add",
            "cli:alice",
            10,
        )


def test_a_bundle_pays_the_incident_but_not_the_after_hours_surcharge(desk: Desk) -> None:
    with desk.gw.worker.sessions.begin() as session:
        assert add_bundle(session, "acme-clinic", 1, actor=ADMIN, at=TUESDAY_10) is None
    desk.mail(email(), datetime(2026, 11, 21, 3, 0, tzinfo=NY))  # Saturday night
    assert [(e.kind, e.amount_minor) for e in desk.ledger()] == [
        ("bundle-debit", 0),
        ("charge", 10000),
    ]


def _concurrently(gw: Gateway, url: str, raws: list[bytes], at: datetime) -> list[JobResult]:
    """Each message processed by its own 'worker': its own engine and sessions, all released
    at one barrier, as two worker processes would race for the same account's bundle."""
    engines = [make_engine(url, immediate=True) for _ in raws]
    barrier = threading.Barrier(len(raws))
    results: list[JobResult | None] = [None] * len(raws)
    failures: list[BaseException] = []

    def work(i: int) -> None:
        envelope = Envelope(
            channel="smtp", received_at=at, mail_from="b@x", recipients=("support@example.com",)
        )
        job = Job(raws[i], envelope, f"race-{at.timestamp()}-{i}")
        sessions = session_factory(engines[i])
        barrier.wait()
        try:
            (results[i],) = process_batch([job], gw.box.current, sessions, gw.worker.blobs, now=at)
        except BaseException as exc:  # surfaced below, never lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(raws))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for engine in engines:
        engine.dispose()
    assert not failures, failures
    return [r for r in results if r is not None]


def test_two_workers_processing_emergencies_at_once_never_debit_the_same_unit(
    desk_on: Desk, database_url: str
) -> None:
    desk = desk_on
    with desk.gw.worker.sessions.begin() as session:
        assert add_bundle(session, "acme-clinic", 5, actor=ADMIN, at=TUESDAY_10) is None
    for round_ in range(4):
        at = TUESDAY_10 + timedelta(minutes=round_)
        raws = [email(message_id=f"<r{round_}w{w}@acme>") for w in range(2)]
        results = _concurrently(desk.gw, database_url, raws, at)
        assert [r.error for r in results] == [None, None]
        assert sorted(r.persisted.outcome for r in results if r.persisted) == ["ticket", "ticket"]
    incidents = desk.incidents()
    ledger = desk.ledger()
    debits = [(e.bundle_id, e.unit_no) for e in ledger if e.kind == "bundle-debit"]
    (bundle,) = desk.bundles()
    assert sorted(debits) == [(bundle.id, unit) for unit in range(1, 6)]  # each unit once
    assert [e.amount_minor for e in ledger if e.kind == "charge"] == [25000] * 3
    assert sorted(e.incident_id for e in ledger) == sorted(i.id for i in incidents)  # one each
    assert len(incidents) == 8 and bundle.used == 5


def _evidence(at: datetime) -> Evidence:
    return Evidence("email", "<x@acme>", "I acknowledge", at, DANA, "test", "Dana")


QUOTE = Quote("USD", 25000, 10000, False, "in hours", "", "2026-11")


def test_a_request_to_confirm_states_what_a_prepaid_incident_pays_and_what_it_does_not() -> None:
    after_hours = dataclasses.replace(QUOTE, after_hours=True)
    assert prepaid_note(0, after_hours) == "none left"
    assert prepaid_note(1, QUOTE) == (
        "1 incident left: one would pay this incident's price, so nothing more is charged"
    )
    assert prepaid_note(2, after_hours) == (
        "2 incidents left: one would pay this incident's price; the USD 100.00 after-hours "
        "surcharge is still charged"
    )


def test_a_second_debit_waits_on_the_bundle_row_lock_until_the_first_commits(
    make_config: Callable[..., Path], pg_url: str
) -> None:
    """PostgreSQL: the bundle row is locked FOR UPDATE; the second transaction waits on that
    lock (not on a unique index after the fact), then finds the bundle empty and charges."""
    gw = Gateway(make_config(storage__url=pg_url))
    desk = Desk(gw)
    cleanup: list[Callable[[], object]] = []
    try:
        for i in range(2):  # two ordinary tickets to record incidents on
            desk.mail(
                email("Printer", "jammed", acknowledged=False, message_id=f"<p{i}@x>"), TUESDAY_10
            )
        with gw.worker.sessions.begin() as session:
            assert add_bundle(session, "acme-clinic", 1, actor=ADMIN, at=TUESDAY_10) is None
        first = gw.worker.sessions()
        cleanup.append(first.close)
        first.begin()
        paid = record_incident(
            first,
            ticket=first.get(Ticket, 1),
            evidence=_evidence(TUESDAY_10),
            quote=QUOTE,
            at=TUESDAY_10,
        )
        assert paid.paid_by == "bundle"
        outcome: list[str] = []

        def second() -> None:
            with gw.worker.sessions.begin() as session:
                ticket = session.get(Ticket, 2)
                assert ticket is not None
                outcome.append(
                    record_incident(
                        session,
                        ticket=ticket,
                        evidence=_evidence(TUESDAY_10),
                        quote=QUOTE,
                        at=TUESDAY_10,
                    ).paid_by
                )

        waiter = threading.Thread(target=second)
        waiter.start()
        cleanup.append(lambda: waiter.join(30))
        holder = first.execute(text("SELECT pg_backend_pid()")).scalar_one()
        engine = make_engine(pg_url)
        try:
            # The second transaction waits on a row of `bundles` that the first has locked.
            query = text(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                "WHERE a.datname = current_database()"
                " AND :holder = ANY(pg_blocking_pids(a.pid))"
                " AND l.locktype = 'tuple' AND l.relation = 'bundles'::regclass"
            )

            def second_is_waiting() -> bool:
                # A fresh transaction per look: PostgreSQL snapshots pg_stat_activity once per
                # transaction, so polling in one transaction never sees a backend that connected
                # after the first look (a CI run under load timed out that way).
                with engine.connect() as watch:
                    return bool(watch.execute(query, {"holder": holder}).scalar_one() == 1)

            wait_for(second_is_waiting)
        finally:
            engine.dispose()
        assert outcome == []  # still waiting while the first holds the unit
        first.commit()
        first.close()
        waiter.join(30)
        assert outcome == ["charge"]
        assert [(e.kind, e.unit_no) for e in desk.ledger()] == [
            ("bundle-debit", 1),
            ("charge", None),
        ]
    finally:
        for step in cleanup:  # the first transaction ends, so a waiting second one ends too
            step()
        gw.close()


def test_bundles_never_go_below_zero_and_bad_purchases_are_refused_in_plain_words(
    desk_on: Desk,
) -> None:
    desk = desk_on
    with desk.gw.worker.sessions.begin() as session:
        known = {"acme-clinic", "bluebird"}
        for account, units, error in [
            ("acme-clinic", 0, "units must be from 1 to 500, not 0"),
            ("acme-clinic", 501, "units must be from 1 to 500, not 501"),
            ("nobody", 5, "unknown account 'nobody'"),
        ]:
            found = add_bundle(
                session, account, units, actor=ADMIN, at=TUESDAY_10, known_accounts=known
            )
            assert found is not None and found.startswith(error)
        assert add_bundle(session, "bluebird", 2, actor=ADMIN, at=TUESDAY_10) is None
    with pytest.raises(IntegrityError), desk.gw.worker.sessions.begin() as session:
        session.execute(update(Bundle).values(used=Bundle.used - 1))  # the check constraint
    with pytest.raises(IntegrityError), desk.gw.worker.sessions.begin() as session:
        session.execute(update(Bundle).values(used=Bundle.units + 1))
    with desk.gw.session() as session:
        assert bundle_balance(session, "bluebird") == 2


def test_a_credit_is_a_new_row_that_reverses_the_charge_or_gives_the_unit_back(
    desk: Desk,
) -> None:
    with desk.gw.worker.sessions.begin() as session:
        assert add_bundle(session, "acme-clinic", 1, actor=ADMIN, at=TUESDAY_10) is None
    covered = desk.mail(email(message_id="<a@x>"), TUESDAY_10)
    charged = desk.mail(email(message_id="<b@x>"), TUESDAY_10)
    linked = desk.sms("EMERGENCY same thing", TUESDAY_10 + timedelta(minutes=5))
    before = [(e.id, e.kind, e.amount_minor) for e in desk.ledger()]
    later = TUESDAY_10 + timedelta(days=2)

    def credit(reference: str | None, kind: str, reason: str = "sent twice") -> str | None:
        with desk.gw.worker.sessions.begin() as session:
            return credit_incident(
                session, desk.ticket(reference or "").id, kind, actor=ADMIN, at=later, reason=reason
            )

    assert credit(charged.reference, "our-fault", "our outage caused it") is None
    assert credit(covered.reference, "duplicate") is None
    assert credit(charged.reference, "merged").startswith(  # type: ignore[union-attr]
        "incident INC-000002 was already credited at"
    )
    assert credit(linked.reference, "duplicate") == (
        f"{linked.reference} is linked to the emergency {charged.reference} and was never "
        "billed: credit that ticket's incident instead"
    )
    assert credit(covered.reference, "goodwill") == (
        "unknown credit kind 'goodwill': use one of duplicate, merged, our-fault"
    )
    assert credit(covered.reference, "duplicate", " ") == "a credit needs a reason"
    ledger = desk.ledger()
    assert [(e.id, e.kind, e.amount_minor) for e in ledger[: len(before)]] == before  # untouched
    assert [(e.kind, e.amount_minor, e.actor) for e in ledger[len(before) :]] == [
        ("credit", -25000, "cli:alice"),
        ("credit", 0, "cli:alice"),
    ]
    bundles = desk.bundles()
    assert [(b.source, b.units, b.used) for b in bundles] == [("purchase", 1, 1), ("credit", 1, 0)]
    with desk.gw.session() as session:
        summary = account_billing(session, "acme-clinic")
        assert summary["bundle"]["remaining"] == 1
        assert summary["totals"] == {
            "USD": {"charged": "250.00", "credited": "250.00", "net": "0.00"}
        }
        actions = [e.action for e in audit_entries(session)]
    assert actions == ["billing.bundle-add", "billing.credit", "billing.credit"]
    # The unit given back pays the next incident.
    desk.mail(email(message_id="<c@x>"), later + timedelta(days=1))
    assert desk.ledger()[-1].kind == "bundle-debit" and desk.ledger()[-1].bundle_id == bundles[1].id


def test_ledger_rows_are_unique_per_incident_and_kind(desk: Desk) -> None:
    desk.mail(email(), TUESDAY_10)
    (charge,) = desk.ledger()
    with pytest.raises(IntegrityError), desk.gw.worker.sessions.begin() as session:
        session.add(
            LedgerEntry(
                at=TUESDAY_10,
                account_id="acme-clinic",
                incident_id=charge.incident_id,
                kind="charge",
                amount_minor=25000,
                currency="USD",
                reason="again",
                actor="test",
            )
        )
    with desk.gw.session() as session:
        assert len(session.execute(select(LedgerEntry)).scalars().all()) == 1
