"""`gateway purge`: closed tickets past retention lose message bodies, attachments and raw mail;
open and recently closed tickets keep them; the ticket, its history and its dedup keys stay (a
replay of a purged message is still a duplicate); a dry run changes nothing; runs are audited."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gateway import clock
from gateway.config.errors import ConfigError
from gateway.config.loader import load
from gateway.intake.blobs import BlobStore
from gateway.privacy.audit import Actor
from gateway.privacy.retention import purge
from gateway.storage.admin import set_status
from gateway.storage.agent_tables import AuditEntry
from gateway.storage.models import AttachmentRecord, Intake, Message, Ticket, TicketEvent
from gateway.storage.queries import find_ticket
from tests.helpers import Gateway
from tests.retention.conftest import LOGO, dump, email_from, run_cli, tree

NOW = clock.now()
LONG_AGO = NOW - timedelta(days=400)
SECRET = b"%PDF-1.4 the lab results of patient 4711 " * 20


@pytest.fixture
def gw(make_config: Callable[..., Path], database_url: str) -> Gateway:
    gateway = Gateway(make_config(storage__url=database_url, retention__raw_message_days=30))
    yield gateway  # type: ignore[misc]
    gateway.close()


def message_of(gw: Gateway, header_id: str) -> Message:
    with gw.session() as session:
        return session.execute(
            select(Message).where(Message.header_message_id == header_id)
        ).scalar_one()


def attachments_of(gw: Gateway, message_id: int) -> list[AttachmentRecord]:
    with gw.session() as session:
        return list(
            session.execute(
                select(AttachmentRecord)
                .where(AttachmentRecord.message_id == message_id)
                .order_by(AttachmentRecord.id)
            ).scalars()
        )


def test_purge_empties_closed_tickets_past_retention_and_keeps_everything_else(
    gw: Gateway,
) -> None:
    old = email_from(
        "Dana <dana@acme-clinic.example>",
        "Lab results printer",
        "The results of patient 4711 did not print.",
        "<old@acme-clinic.example>",
        attachments=(("results.pdf", "application/pdf", SECRET), ("logo.png", "image/png", LOGO)),
    )
    gw.ingest(old)
    gw.ingest(
        email_from(
            "Sam <sam@bluebird.example>",
            "Still open",
            "Our tracking page is down.",
            "<open@bluebird.example>",
            attachments=(("logo.png", "image/png", LOGO),),
        )
    )
    gw.ingest(
        email_from(
            "Front Desk <frontdesk@acme-clinic.example>",
            "Closed yesterday",
            "Thanks, solved.",
            "<recent@acme-clinic.example>",
        )
    )
    gw.ingest(
        email_from(
            "Dana <dana@acme-clinic.example>",
            "Out of office",
            "I am away until Monday.",
            "<ooo@acme-clinic.example>",
            Auto_Submitted="auto-replied",
        )
    )
    gw.drain()
    redelivery = b"Received: from relay2 by mx; Mon, 23 Nov 2026\r\n" + old
    gw.ingest(redelivery)  # a recorded duplicate: its raw blob is named by no row
    gw.drain()
    blobs = gw.worker.blobs
    orphan = hashlib.sha256(redelivery).hexdigest()
    kept = blobs.file(orphan)
    assert kept is not None
    os.utime(kept, (LONG_AGO.timestamp(), LONG_AGO.timestamp()))

    with gw.session() as session:
        tickets = {t.subject: t for t in session.execute(select(Ticket)).scalars()}
    closed_long_ago = tickets["Lab results printer"].reference
    for ref in (closed_long_ago, tickets["Closed yesterday"].reference):
        with gw.session() as session:
            assert set_status(session, ref or "", "closed", actor="alice", reason="") is None
    with gw.session() as session, session.begin():
        # As if closed 400 days ago; the open ticket's mail arrived 40 days ago.
        session.execute(
            update(Ticket).where(Ticket.reference == closed_long_ago).values(closed_at=LONG_AGO)
        )
        session.execute(
            update(Message)
            .where(Message.header_message_id == "ooo@acme-clinic.example")
            .values(received_at=LONG_AGO)
        )
        session.execute(
            update(Message)
            .where(Message.header_message_id == "open@bluebird.example")
            .values(received_at=NOW - timedelta(days=40))
        )
    before_old, before_open = (
        message_of(gw, "old@acme-clinic.example"),
        message_of(gw, "open@bluebird.example"),
    )
    secret, logo = (a.sha256 for a in attachments_of(gw, before_old.id))

    # Dry run: the numbers, and not one byte changed.
    url, state = gw.settings.database_url, gw.settings.state_dir
    dump_before, files_before = dump(url), tree(state / "blobs")
    report = purge(
        gw.worker.sessions,
        BlobStore(state / "blobs"),
        now=NOW,
        older_than_days=365,
        raw_message_days=30,
        actor=Actor("ops"),
    )
    assert not report.applied
    assert report.tickets == (closed_long_ago,)
    assert (report.ticketless_messages, report.messages, report.attachments) == (1, 2, 2)
    # Raw mail: the old ticket's, the auto-reply's, and the open ticket's (raw_message_days).
    assert (report.raw_messages, report.orphan_blobs) == (3, 1)
    assert report.blobs == 5  # 3 raw + the results PDF + the orphan; the shared logo stays
    assert report.bytes_freed >= len(SECRET)
    assert dump(url) == dump_before and tree(state / "blobs") == files_before

    applied = run_cli(gw.box.config_dir, "purge", "--apply", "--actor", "ops")
    assert applied.returncode == 0, applied.stderr
    assert "purged: 1 ticket(s)" in applied.stdout

    after_old = message_of(gw, "old@acme-clinic.example")
    assert (after_old.text, after_old.raw_sha256) == ("", "")
    assert after_old.subject == "Lab results printer"  # metadata stays
    assert [(a.filename, a.stored, a.sha256) for a in attachments_of(gw, after_old.id)] == [
        ("results.pdf", False, secret),
        ("logo.png", False, logo),
    ]
    assert blobs.file(secret) is None and blobs.file(before_old.raw_sha256) is None
    assert blobs.file(orphan) is None
    assert blobs.get(logo) == LOGO, "the open ticket's attachment still names the logo"
    after_open = message_of(gw, "open@bluebird.example")
    assert after_open.text == before_open.text and after_open.raw_sha256 == ""
    assert [a.stored for a in attachments_of(gw, after_open.id)] == [True]
    recent = message_of(gw, "recent@acme-clinic.example")
    assert recent.text == "Thanks, solved.\n" and blobs.file(recent.raw_sha256) is not None
    assert message_of(gw, "ooo@acme-clinic.example").text == ""

    with gw.session() as session:
        ticket = find_ticket(session, closed_long_ago)
        assert ticket is not None and ticket.status == "closed"
        events = (
            session.execute(
                select(TicketEvent).where(
                    TicketEvent.ticket_id == ticket.id, TicketEvent.kind == "purge"
                )
            )
            .scalars()
            .all()
        )
        assert len(events) == 1 and events[0].actor == "cli:ops"
        audits = (
            session.execute(
                select(AuditEntry)
                .where(AuditEntry.action.like("retention.%"))
                .order_by(AuditEntry.id)
            )
            .scalars()
            .all()
        )
        assert [(a.action, a.actor) for a in audits] == [
            ("retention.purge", "cli:ops"),
            ("retention.purge", "cli:ops"),
            ("retention.purge-raw", "cli:ops"),
            ("retention.purge-orphans", "cli:ops"),
        ]
        assert audits[0].before["tickets"] == [closed_long_ago]
        assert audits[0].after["attachments_removed"] == 2

    # The dedup key outlives the body: a replay is a recorded duplicate, not a new ticket.
    gw.ingest(old)
    gw.drain()
    with gw.session() as session:
        last = session.execute(select(Intake).order_by(Intake.id.desc()).limit(1)).scalar_one()
        assert last.outcome == "duplicate"
        assert len(session.execute(select(Ticket)).scalars().all()) == 3

    # Nothing left to purge: nothing changes and nothing more is audited.
    dump_after = dump(url)
    again = run_cli(gw.box.config_dir, "purge", "--apply")
    assert again.returncode == 0 and "purged: 0 ticket(s)" in again.stdout
    changed = {t for t, rows in dump(url).items() if rows != dump_after[t]}
    assert changed == set()


def test_purge_refuses_less_than_a_day_and_retention_config_is_validated(
    make_config: Callable[..., Path],
) -> None:
    result = run_cli(make_config(), "purge", "--older-than", "0")
    assert result.returncode == 2 and "at least 1 day" in result.stderr
    with pytest.raises(ConfigError) as bad:
        load(make_config(retention__closed_ticket_days=0, retention__raw_message_days=-1))
    problems = {(p.file, p.key) for p in bad.value.problems}
    assert problems == {
        ("gateway.toml", "retention.closed_ticket_days"),
        ("gateway.toml", "retention.raw_message_days"),
    }
