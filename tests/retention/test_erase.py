"""`gateway erase`: a person's address, number and words leave the database, the blob store and
the spool; billing keeps pseudonymous references and every amount; a dry run changes nothing;
the config is never rewritten but an erasure refuses while it still names the person."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from gateway.emergency.billing_views import export_incidents
from gateway.privacy.identity import install_salt, pseudonym
from gateway.storage.agent_tables import AuditEntry
from gateway.storage.billing_tables import Incident
from gateway.storage.models import (
    AttachmentRecord,
    CustomerContact,
    Intake,
    Message,
    OutboxRow,
    SeverityLabel,
    Ticket,
)
from tests.helpers import Gateway, gateway_cli
from tests.retention.conftest import (
    COLLEAGUE,
    LOGO,
    NEIGHBOUR,
    ROSA,
    ROSA_PHONE,
    SENTENCE,
    database_hits,
    dump,
    email_from,
    file_hits,
    rosa_needles,
    rosa_story,
    run_cli,
    tree,
)

EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def totals(gw: Gateway) -> list[tuple[str, int, int, int, int, int]]:
    with gw.session() as session:
        return [
            (
                t.currency,
                t.incidents,
                t.bundle_units,
                t.charged_minor,
                t.credited_minor,
                t.net_minor,
            )
            for t in export_incidents(session, *EVER).totals
        ]


def test_erasure_leaves_no_trace_of_address_number_or_words_and_billing_totals_unchanged(
    gw: Gateway,
) -> None:
    story = rosa_story(gw)
    config = gw.box.config_dir
    url = gw.settings.database_url
    state = gw.settings.state_dir
    # Before: she is everywhere the story put her (the scanners do find her).
    assert {h.split(":")[0] for h in database_hits(url, rosa_needles)} >= {
        "messages.text",
        "messages.sender",
        "tickets.contact_email",
        "outbox.recipient",
        "intakes.sender",
        "audit_log.before",
        "incidents.evidence_text",
        "incidents.sender",
        "severity_labels.text",
        "forward_deliveries.body",
        "sms_opt_outs.phone",
        "customer_contacts.email",
        "customer_contacts.phone",
    }
    assert file_hits(state / "blobs", rosa_needles) and file_hits(state / "spool", rosa_needles)
    billed = totals(gw)
    assert billed == [("USD", 2, 0, 50000, 0, 50000)]

    # A dry run says what it would do and changes nothing at all.
    before, blobs_before, spool_before = dump(url), tree(state / "blobs"), tree(state / "spool")
    dry = run_cli(config, "erase", "--contact", ROSA.upper())
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    assert "dry run" in out and "messages" in out and "blob files" in out
    assert f"erase it too with --contact {ROSA_PHONE}" in out  # her other identifier, linked
    assert dump(url) == before
    assert tree(state / "blobs") == blobs_before and tree(state / "spool") == spool_before

    by_address = run_cli(
        config,
        "erase",
        "--contact",
        ROSA,
        "--apply",
        "--actor",
        "dpo",
        "--reason",
        f"GDPR request 42 from {ROSA}",
    )
    assert by_address.returncode == 0, by_address.stdout + by_address.stderr
    assert "verified: no trace left" in by_address.stdout
    by_phone = run_cli(config, "erase", "--contact", "+1 (617) 555-0177", "--apply")
    assert by_phone.returncode == 0, by_phone.stdout + by_phone.stderr

    # Nowhere: not in any column of any table, not in any blob, not in the spool.
    assert database_hits(url, rosa_needles) == []
    assert file_hits(state / "blobs", rosa_needles) == []
    assert file_hits(state / "spool", rosa_needles) == []
    # The money is untouched; billing names her by a stable pseudonym.
    assert totals(gw) == billed
    salt = install_salt(state)
    as_address, as_phone = pseudonym(salt, "email", ROSA), pseudonym(salt, "phone", ROSA_PHONE)
    with gw.session() as session:
        incident = session.execute(
            select(Incident)
            .join(Ticket, Ticket.id == Incident.ticket_id)
            .where(Ticket.reference == story.first_ticket)
        ).scalar_one()
        assert incident.sender == as_address and as_address in incident.contact
        assert incident.price_minor == 25000
        assert {i.sender for i in session.execute(select(Intake)).scalars()} >= {
            as_address,
            as_phone,
            COLLEAGUE,
            NEIGHBOUR,
        }
        mine = session.execute(select(Message).where(Message.sender == as_address)).scalars().all()
        assert len(mine) == 2 and all(m.text == "" and m.raw_sha256 == "" for m in mine)
        first = session.execute(
            select(Ticket).where(Ticket.reference == story.first_ticket)
        ).scalar_one()
        assert (first.contact_email, first.contact_name, first.subject) == (
            as_address,
            None,
            "[erased]",
        )
        # Her replies not yet sent are never sent to a pseudonym.
        to_her = (
            session.execute(
                select(OutboxRow).where(OutboxRow.recipient.in_((as_address, as_phone)))
            )
            .scalars()
            .all()
        )
        assert to_her and all(o.status == "suppressed" and o.body == "" for o in to_her)
        assert session.execute(select(SeverityLabel)).scalars().all() == []
        assert [c.email for c in session.execute(select(CustomerContact)).scalars()] == [COLLEAGUE]
        # A colleague's mail that named her keeps its text (pseudonymised) but not its raw mail;
        # the logo it shares with her mail stays, because the colleague's copy still names it.
        desk = session.execute(
            select(Message).where(Message.header_message_id == "desk-1@quokka-vet.example")
        ).scalar_one()
        assert as_address in desk.text and as_phone in desk.text and desk.raw_sha256 == ""
        logo = session.execute(
            select(AttachmentRecord).where(AttachmentRecord.message_id == desk.id)
        ).scalar_one()
        assert logo.stored and gw.worker.blobs.get(logo.sha256) == LOGO
        # The neighbour whose address ends in hers is untouched.
        jim = session.execute(select(Message).where(Message.sender == NEIGHBOUR)).scalar_one()
        assert jim.raw_sha256 and jim.text == "How do I scan double-sided?\n"
        # Both runs are audited, by pseudonym only (the scan above found no address in them).
        audits = (
            session.execute(
                select(AuditEntry)
                .where(AuditEntry.action == "privacy.erase")
                .order_by(AuditEntry.id)
            )
            .scalars()
            .all()
        )
        assert [(a.actor, a.target) for a in audits] == [
            ("cli:dpo", as_address),
            (audits[1].actor, as_phone),
        ]
        assert audits[0].reason == f"GDPR request 42 from {as_address}"
        assert audits[0].after["blobs_deleted"] >= 3
    # Erasing again finds nothing and records nothing.
    again = run_cli(config, "erase", "--contact", ROSA, "--apply")
    assert again.returncode == 0 and "verified" in again.stdout
    with gw.session() as session:
        count = len(
            session.execute(select(AuditEntry).where(AuditEntry.action == "privacy.erase"))
            .scalars()
            .all()
        )
    assert count == 2


def test_a_contact_still_in_customers_toml_is_reported_and_apply_refuses_without_force(
    make_config: Callable[..., Path],
) -> None:
    # The rules here do not depend on the database: SQLite only, to keep the suite quick.
    gw = Gateway(make_config())
    try:
        _contact_in_config(gw)
    finally:
        gw.close()


def _contact_in_config(gw: Gateway) -> None:
    dana = "dana@acme-clinic.example"  # a contact of the sample customers.toml
    gw.ingest(
        email_from(f"Dana <{dana}>", "Label printer", SENTENCE, "<dana-1@acme-clinic.example>")
    )
    gw.drain()
    # One of hers still waits in the spool: an erasure cannot be complete before it is processed.
    gw.ingest(email_from(f"Dana <{dana}>", "Later", "More.", "<dana-2@acme-clinic.example>"))
    url = gw.settings.database_url
    before = dump(url)
    # The real command, as an admin runs it.
    refused = gateway_cli(gw.box.config_dir, "erase", "--contact", dana, "--apply")
    assert refused.returncode == 1
    out = refused.stdout.decode()
    assert "still in customers.toml:" in out and "--force" in out
    assert dump(url) == before
    forced = run_cli(gw.box.config_dir, "erase", "--contact", dana, "--apply", "--force")
    assert forced.returncode == 1, "one entry of hers is still waiting in the spool"
    assert "waiting to be processed" in forced.stdout
    assert "still in customers.toml:" in forced.stdout
    assert not [h for h in database_hits(url, lambda t: ["dana"] if dana in t.lower() else []) if h]
    gw.drain()
    done = run_cli(gw.box.config_dir, "erase", "--contact", dana, "--apply", "--force")
    assert done.returncode == 0, done.stdout
    assert database_hits(url, lambda t: ["dana"] if dana in t.lower() else []) == []


def test_erase_answers_usage_error_for_a_contact_that_is_neither_address_nor_number(
    make_config: Callable[..., Path],
) -> None:
    for bad in ("not a contact", "12", "@", "rosa@"):
        result = run_cli(make_config(), "erase", "--contact", bad)
        assert result.returncode == 2, bad
        assert "--contact:" in result.stderr and repr(bad) in result.stderr
