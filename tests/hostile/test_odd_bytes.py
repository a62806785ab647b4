"""Hostile bytes through the whole pipeline in-process, on SQLite and PostgreSQL: NUL bytes,
8-bit headers, unknown charsets, a 1 MB header line, a 1 MB subject, 10,000 tiny MIME parts.
Each must end as a ticket (the database must accept whatever parse produced), never as a crash or
a quarantine. One gateway per backend takes them all (a fresh database costs seconds)."""

from __future__ import annotations

from email.message import EmailMessage

from sqlalchemy import select

from gateway.storage.models import AttachmentRecord, Intake, Message, Ticket
from tests.helpers import Gateway, make_email
from tests.hostile.kit import assert_ended_clearly, endings

NUL_IN_BODY = make_email(subject="Scanner", body="before \x00 after", message_id="<nul1@x>")
NUL_IN_HEADERS = (
    b"From: Dana \x00Evil <dana@acme-clinic.example>\r\nTo: support@example.com\r\n"
    b"Subject: printer\x00 offline\r\nMessage-ID: <nul\x00two@acme-clinic.example>\r\n"
    b"X-Odd: a\x00b\r\n\r\nThe body.\r\n"
)
EIGHT_BIT_HEADERS = (
    b"From: Ren\xe9 M\xfcller <rene@acme-clinic.example>\r\nTo: support@example.com\r\n"
    b"Subject: caf\xc3\xa9 \xff\xfe printer \xe2\x82\xac\r\n"
    b"Message-ID: <\xc3\xa9t\xc3\xa9@acme-clinic.example>\r\n\r\nBody \xe9\xff.\r\n"
)
UNKNOWN_CHARSETS = (
    b"From: =?x-no-such-charset?q?Ren=E9?= <rene@acme-clinic.example>\r\n"
    b"Subject: =?x-unknown?b?Y2Fm6Q==?= and =?utf-8?q?=FF?=\r\nMessage-ID: <cs@x>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b'--b\r\nContent-Type: text/plain; charset="x-unknown"\r\n\r\nh\xe9llo\r\n'
    b'--b\r\nContent-Type: text/plain; charset="utf-16"\r\n\r\n\xff\xfe\x00\xd8odd\r\n'
    b'--b\r\nContent-Type: text/html; charset="utf-7"\r\n\r\n+AGEAYgBj-<b>x</b>\r\n--b--\r\n'
)
# PostgreSQL's btree index entries stop near 2.7 kB; the stored Message-ID is cut at 998
# characters, and every 8-bit byte of it decodes to a 3-byte replacement character.
EIGHT_BIT_MESSAGE_ID = make_email(message_id="<placeholder@x>", body="8-bit id").replace(
    b"<placeholder@x>",
    ("<" + "".join(chr(0x4E00 + i * 7919 % 20000) for i in range(975)) + "@x.example>").encode(),
)
ONE_MB_HEADER_LINE = make_email(message_id="<longhdr@x>", subject="Long header").replace(
    b"Subject:", b"X-Padding: " + b"A" * 1024 * 1024 + b"\nSubject:", 1
)
ONE_MB_SUBJECT = make_email(subject="S" * 1024 * 1024, message_id="<longsubj@x>")


def ten_thousand_parts() -> bytes:
    msg = EmailMessage()
    msg["From"] = "dana@acme-clinic.example"
    msg["To"] = "support@example.com"
    msg["Subject"] = "Ten thousand parts"
    msg["Message-ID"] = "<parts@acme-clinic.example>"
    head = msg.as_bytes().split(b"\n\n", 1)[0]
    parts = [b"--p\nContent-Type: text/plain\n\nThe first part is the text.\n"]
    parts += [b"--p\nContent-Type: application/x-tiny\n\nx\n"] * 10_000
    return (
        head
        + b'\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="p"\n\n'
        + b"".join(parts)
        + b"--p--\n"
    )


CASES = {
    "nul-in-body": NUL_IN_BODY,
    "nul-in-headers": NUL_IN_HEADERS,
    "8bit-headers": EIGHT_BIT_HEADERS,
    "unknown-charsets": UNKNOWN_CHARSETS,
    "8bit-message-id": EIGHT_BIT_MESSAGE_ID,
    "1mb-header-line": ONE_MB_HEADER_LINE,
    "1mb-subject": ONE_MB_SUBJECT,
    "10000-parts": ten_thousand_parts(),
}


def test_nul_8bit_unknown_charsets_huge_headers_and_10000_parts_each_become_a_ticket(
    gateway: Gateway,
) -> None:
    ids = {name: gateway.ingest(raw, channel="pipe") for name, raw in CASES.items()}
    gateway.drain()
    ended = endings(gateway.settings.database_url, gateway.settings.spool_dir)
    for name, spool_id in ids.items():
        assert_ended_clearly(ended[spool_id], name)
    assert {name: ended[i].outcome for name, i in ids.items()} == dict.fromkeys(CASES, "ticket")

    with gateway.session() as s:

        def ticket_of(name: str) -> tuple[Ticket, Message]:
            intake = s.execute(select(Intake).where(Intake.spool_id == ids[name])).scalar_one()
            return s.get_one(Ticket, intake.ticket_id), s.get_one(Message, intake.message_id)

        ticket, message = ticket_of("nul-in-headers")
        assert ticket.subject == "printer offline"  # NUL dropped, never stored
        assert message.sender == "dana@acme-clinic.example"
        ticket, message = ticket_of("nul-in-body")
        assert "before  after" in message.text
        ticket, message = ticket_of("8bit-headers")
        assert "printer" in ticket.subject and message.sender == "rene@acme-clinic.example"
        ticket, message = ticket_of("unknown-charsets")
        assert "llo" in message.text
        ticket, _ = ticket_of("1mb-header-line")
        assert ticket.subject == "Long header"
        ticket, message = ticket_of("1mb-subject")
        assert 0 < len(ticket.subject) <= 998
        assert "subject-truncated(" in message.defects  # cut, and said so
        ticket, message = ticket_of("10000-parts")
        assert ticket.subject == "Ten thousand parts"
        assert "The first part is the text." in message.text
        # parse stops walking at its bound, and says so
        assert "too-many-parts(after 5000 parts)" in message.defects
        attachments = s.execute(
            select(AttachmentRecord).where(AttachmentRecord.message_id == message.id)
        ).all()
        assert 0 < len(attachments) < 10_000
