"""Size limits and mail loops against the real daemon over SMTP, with its outbound relay played
by a misbehaving auto-responder: a 25 MiB attachment is accepted and ticketed, a message over the
limit gets 552 and nothing is spooled, a 1 MB header line is refused clearly (500, RFC 5321
4.5.3.1.6) rather than crashing anything, NUL bytes and 8-bit headers over SMTP become tickets; and
an auto-responder answering every mail we send never gets one single reply back from us."""

from __future__ import annotations

import base64
import hashlib
import os
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text

from tests.helpers import DaemonProcess, free_port, make_email, wait_for
from tests.hostile.kit import assert_ended_clearly, endings, smtp_data, spool_id_of

MiB = 1024 * 1024


class AutoResponder:
    """A real SMTP server standing in for the relay whose every recipient has an auto-responder
    that answers each mail it gets (the worst case: it even answers auto-replies), back to the
    daemon, in the style named by the recipient's local part."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.answered = 0
        self.daemon_port = 0
        responder = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                raw = envelope.original_content or envelope.content
                for rcpt in envelope.rcpt_tos:
                    if rcpt.startswith("away-"):  # the loop test's customers
                        responder.received.append(raw)
                        threading.Thread(target=responder.answer, args=(rcpt, raw)).start()
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def answer(self, rcpt: str, raw: bytes) -> None:
        ours = message_from_bytes(raw)
        style = rcpt.split("@", 1)[0].split("-", 1)[1]
        reply = EmailMessage()
        reply["From"] = rcpt
        reply["To"] = str(ours["From"])
        reply["Subject"] = f"Re: {' '.join(str(ours['Subject']).split())}"
        reply["Message-ID"] = f"<auto-{self.answered}-{time.time_ns()}@responder.example>"
        reply["Date"] = "Mon, 23 Nov 2026 10:05:00 -0500"
        reply["In-Reply-To"] = str(ours["Message-ID"])
        if style == "rfc3834":
            reply["Auto-Submitted"] = "auto-replied"
        elif style == "xautoreply":
            reply["X-Autoreply"] = "yes"
        elif style == "precedence":
            reply["Precedence"] = "bulk"
        elif style == "quotes-headers":  # echoes our headers back, as some responders do
            reply["X-Intake-Gateway"] = str(ours["X-Intake-Gateway"])
        reply.set_content(f"I am away. Your message:\n\n{ours.get_payload()}")
        with smtplib.SMTP("127.0.0.1", self.daemon_port, timeout=30) as client:
            client.sendmail(rcpt, ["support@example.com"], reply.as_bytes())
        self.answered += 1


STYLES = ("rfc3834", "xautoreply", "precedence", "quotes-headers", "noheaders-inreplyto")


@pytest.fixture(scope="module")
def responder() -> Iterator[AutoResponder]:
    r = AutoResponder()
    r.controller.start()
    yield r
    r.controller.stop()


@pytest.fixture(scope="module")
def daemon(
    start_daemon: Callable[..., DaemonProcess], responder: AutoResponder
) -> Iterator[DaemonProcess]:
    d = start_daemon(
        outbound__enabled=True,
        outbound__relay_port=responder.port,
        webhooks__enabled=False,
    )
    responder.daemon_port = d.smtp_port
    yield d


def db_url(daemon: DaemonProcess) -> str:
    return f"sqlite:///{daemon.state / 'gateway.db'}"


def ending_of(daemon: DaemonProcess, spool_id: str, timeout: float = 120) -> Any:
    return wait_for(
        lambda: endings(db_url(daemon), daemon.state / "spool").get(spool_id), timeout=timeout
    )


def test_a_25_mib_attachment_is_accepted_and_ticketed_with_the_attachment_stored(
    daemon: DaemonProcess,
) -> None:
    data = os.urandom(25 * MiB)
    # Built by hand: the email package's generator takes many seconds over 25 MiB.
    raw = (
        b"From: dana@acme-clinic.example\r\nTo: support@example.com\r\n"
        b"Subject: Database backup\r\nMessage-ID: <backup@acme-clinic.example>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nThe backup is attached.\r\n"
        b"--b\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; "
        b'filename="backup.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(data).replace(b"\n", b"\r\n")
        + b"--b--\r\n"
    )
    assert len(raw) > 33 * MiB  # base64 on the wire, as an MTA delivers it
    code, reply = smtp_data(daemon.smtp_port, raw)
    assert code == 250, reply
    ending = ending_of(daemon, spool_id_of(reply))
    assert ending.outcome == "ticket", ending
    digest = hashlib.sha256(data).hexdigest()
    blob = daemon.state / "blobs" / digest[:2] / digest
    assert blob.stat().st_size == len(data)


def test_a_message_over_the_size_limit_gets_552_and_nothing_is_spooled(
    daemon: DaemonProcess,
) -> None:
    limit = 40 * MiB  # the sample config's limits.max_message_bytes
    body = b"x" * 996 + b"\r\n"  # long (legal) lines: fewer for the server to read
    raw = make_email(message_id="<huge@acme-clinic.example>").replace(b"\n", b"\r\n") + body * (
        limit // len(body) + 10
    )
    pending_before = len(list((daemon.state / "spool").rglob("*.msg")))
    code, reply = smtp_data(daemon.smtp_port, raw)
    assert code == 552, reply
    assert len(list((daemon.state / "spool").rglob("*.msg"))) == pending_before


def test_a_1_mb_header_line_over_smtp_is_refused_clearly_and_the_daemon_goes_on(
    daemon: DaemonProcess,
) -> None:
    raw = make_email(message_id="<hdr1mb@acme-clinic.example>").replace(
        b"Subject:", b"X-Padding: " + b"A" * MiB + b"\nSubject:", 1
    )
    code, reply = smtp_data(daemon.smtp_port, raw)
    assert code == 500 and "Line too long" in reply
    code, reply = smtp_data(daemon.smtp_port, make_email(message_id="<after1mb@x>"))
    assert code == 250
    assert ending_of(daemon, spool_id_of(reply)).outcome == "ticket"


@pytest.mark.parametrize(
    "raw",
    [
        b"From: Dana <dana@acme-clinic.example>\r\nSubject: nul\x00 here\r\n"
        b"Message-ID: <smtpnul@x>\r\n\r\nbody \x00 with NUL\r\n",
        b"From: Ren\xc3\xa9 <rene@acme-clinic.example>\r\nSubject: caf\xc3\xa9 \xff\r\n"
        b"Message-ID: <smtp8bit@x>\r\n\r\nh\xe9llo\r\n",
        b"From: a@acme-clinic.example\r\nSubject: =?x-bogus?q?caf=E9?=\r\nMessage-ID: <cs@x>\r\n"
        b'Content-Type: text/plain; charset="x-bogus"\r\n\r\nh\xe9llo\r\n',
    ],
    ids=["nul", "8bit-headers", "unknown-charset"],
)
def test_nul_8bit_and_unknown_charsets_over_smtp_become_tickets(
    daemon: DaemonProcess, raw: bytes
) -> None:
    code, reply = smtp_data(daemon.smtp_port, raw)
    assert code == 250, reply
    ending = ending_of(daemon, spool_id_of(reply))
    assert_ended_clearly(ending, repr(raw[:40]))
    assert ending.outcome == "ticket"


def test_an_auto_responder_answering_everything_never_gets_a_reply_from_us(
    daemon: DaemonProcess, responder: AutoResponder
) -> None:
    before = len(responder.received)
    assert before == 0
    for style in STYLES:
        raw = make_email(
            sender=f"away-{style}@responder.example",
            subject=f"Printer question ({style})",
            message_id=f"<loop-{style}@responder.example>",
        )
        assert smtp_data(daemon.smtp_port, raw)[0] == 250
    # Each customer mail gets its one acknowledgement; each acknowledgement one auto-reply.
    wait_for(lambda: len(responder.received) - before >= len(STYLES), timeout=120)
    wait_for(lambda: responder.answered >= len(STYLES), timeout=60)
    engine = create_engine(db_url(daemon))

    def auto_replies_ended() -> bool:
        with engine.connect() as conn:
            n = conn.execute(
                text("SELECT count(*) FROM intakes WHERE sender LIKE 'away-%@responder.example'")
            ).scalar_one()
            unsent = conn.execute(
                text("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')")
            ).scalar_one()
        return n == 2 * len(STYLES) and unsent == 0

    try:
        wait_for(auto_replies_ended, timeout=120)
        time.sleep(3)  # the outbox sender polls every second: give a stray reply time to go
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT i.sender, i.outcome, o.status FROM intakes i "
                    "LEFT JOIN outbox o ON o.intake_id = i.id "
                    "WHERE i.sender LIKE 'away-%@responder.example' ORDER BY i.id"
                )
            ).all()
    finally:
        engine.dispose()
    replies = len(responder.received) - before - len(STYLES)
    print(f"\nauto-responder loop: {len(STYLES)} styles, replies to auto-replies: {replies}")
    for row in rows:
        print(f"  {row.sender:42} {row.outcome:10} outbox={row.status}")
    assert replies == 0
    acknowledged = [r for r in rows if r.status == "sent"]
    assert len(acknowledged) == len(STYLES)  # the customers' own mails, once each
