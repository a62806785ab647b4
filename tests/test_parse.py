"""Stage 1, parse: any bytes in, a ParsedMessage out, never an exception; and the dedup identity
of an email (DESIGN promise 2) — stable across transports, different for different messages."""

from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc
from datetime import UTC, datetime
from email.message import EmailMessage

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.intake.rawmail import looks_like_message
from gateway.intake.spool import Envelope
from gateway.message import ParsedMessage
from gateway.stages.parse import parse
from tests.helpers import make_email

MiB = 1024 * 1024
MAX_ATTACHMENT = 30 * MiB  # the sample config's limits.max_attachment_bytes
OLE_HEADER = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Outlook .msg (compound file), not RFC 5322


def envelope(mail_from: str | None = "dana@acme-clinic.example") -> Envelope:
    return Envelope(
        channel="smtp",
        received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
        mail_from=mail_from,
        recipients=("support@example.com",),
    )


def parsed(raw: bytes, max_attachment: int = MAX_ATTACHMENT) -> ParsedMessage:
    return parse(raw, envelope(), "spool-1", max_attachment)


def key(raw: bytes) -> str:
    return parsed(raw).dedup_key


def with_attachments(*parts: tuple[bytes, str, str]) -> bytes:
    """A message with a text body and the given (data, content type, filename) attachments."""
    msg = EmailMessage()
    msg["From"] = "dana@acme-clinic.example"
    msg["To"] = "support@example.com"
    msg["Subject"] = "Logs attached"
    msg["Message-ID"] = "<att@acme-clinic.example>"
    msg.set_content("The logs are attached.")
    for data, ctype, filename in parts:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


# ---- dedup identity ---------------------------------------------------------------------------


def test_a_redelivery_with_an_extra_received_header_and_crlf_has_the_same_dedup_key() -> None:
    raw = make_email()
    redelivered = b"Received: from relay2 by mx; Mon, 23 Nov 2026\r\n" + raw.replace(b"\n", b"\r\n")
    assert key(redelivered) == key(raw)
    assert key(raw).startswith("email:m1@acme-clinic.example:")


def test_the_dedup_key_ignores_an_mbox_from_line_and_trailing_blank_lines() -> None:
    raw = make_email()
    assert key(b"From dana@acme-clinic.example Mon Nov 23 10:00:00 2026\n" + raw + b"\n\n") == key(
        raw
    )


def test_a_different_body_with_the_same_message_id_has_a_different_dedup_key() -> None:
    first = key(make_email(body="The scanner is broken.", message_id="<reused@x>"))
    second = key(make_email(body="Invoices are not printing.", message_id="<reused@x>"))
    assert first != second
    assert first.startswith("email:reused@x:") and second.startswith("email:reused@x:")


def test_the_message_id_in_the_dedup_key_is_case_insensitive_and_without_brackets() -> None:
    assert key(make_email(message_id="<ABC@Example.COM>")) == key(
        make_email(message_id="<abc@example.com>")
    )


def test_without_a_message_id_the_key_depends_on_sender_date_subject_and_body() -> None:
    base = make_email(message_id=None)
    assert key(base).startswith("email-nomid:")
    assert key(base) == key(b"Received: from relay by mx\r\n" + base.replace(b"\n", b"\r\n"))
    variants = [
        make_email(message_id=None, sender="other@acme-clinic.example"),
        make_email(message_id=None, subject="Printer offline again"),
        make_email(message_id=None, body="A different question."),
        base.replace(b"Date: Mon, 23 Nov 2026 10:00:00", b"Date: Mon, 23 Nov 2026 10:05:00"),
    ]
    keys = {key(v) for v in variants}
    assert len(keys) == len(variants)
    assert key(base) not in keys


def test_a_very_long_message_id_still_gives_a_dedup_key_that_fits_the_database_column() -> None:
    """intakes.dedup_key is VARCHAR(512): PostgreSQL refuses a longer key and the message is
    quarantined at persist. A forged or broken Message-ID must not do that."""
    from sqlalchemy import String

    from gateway.storage.models import Intake

    column_type = Intake.__table__.c.dedup_key.type
    assert isinstance(column_type, String) and column_type.length
    limit = column_type.length
    long_id = "<" + "a" * 900 + "@spam.example>"
    k1 = key(make_email(message_id=long_id))
    k2 = key(make_email(message_id=long_id, body="Another body."))
    assert len(k1) <= limit
    assert k1 != k2  # whatever shortening is used keeps different messages apart


# ---- headers and text -------------------------------------------------------------------------


def test_an_mbox_from_line_is_stripped_before_parsing() -> None:
    raw = b"From MAILER-DAEMON Mon Nov 23 10:00:00 2026\n" + make_email(subject="Hello")
    message = parsed(raw)
    assert message.sender == "dana@acme-clinic.example"
    assert message.subject == "Hello"
    assert message.header("from") == "dana@acme-clinic.example"
    assert all(not name.startswith("from ") for name, _ in message.headers)
    assert message.raw_size == len(raw)  # the raw bytes themselves are untouched


def test_rfc2047_encoded_subject_and_sender_name_are_decoded() -> None:
    raw = (
        b"From: =?iso-8859-1?q?Ren=E9_M=FCller?= <rene@acme-clinic.example>\n"
        b"Subject: =?utf-8?b?Q2Fmw6kgcHJpbnRlcg==?= =?utf-8?q?_=E2=82=AC_broken?=\n"
        b"Message-ID: <enc@x>\n\nbody\n"
    )
    message = parsed(raw)
    assert message.subject == "Café printer € broken"
    assert message.sender_name == "René Müller"
    assert message.sender == "rene@acme-clinic.example"


def test_an_unknown_charset_never_raises_and_yields_text() -> None:
    raw = (
        b"From: a@b.example\nSubject: =?x-unknown?q?caf=E9?=\nMessage-ID: <cs@x>\n"
        b'Content-Type: text/plain; charset="x-unknown"\n\nh\xe9llo world\n'
    )
    message = parsed(raw)
    assert "llo world" in message.text
    assert isinstance(message.subject, str) and message.subject


def test_invalid_utf8_declared_as_utf8_never_raises_and_yields_text() -> None:
    raw = (
        b"From: a@b.example\nSubject: bad \xff\xfe bytes\nMessage-ID: <u8@x>\n"
        b'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: 8bit\n\n'
        b"caf\xc3 au \xff\xfe lait\n"
    )
    message = parsed(raw)
    assert "au" in message.text and "lait" in message.text
    assert "bad" in message.subject
    message.text.encode("utf-8")  # storable: no lone surrogates


def test_html_only_mail_yields_its_text_without_markup() -> None:
    msg = EmailMessage()
    msg["From"] = "a@b.example"
    msg["Subject"] = "html"
    msg.set_content("<html><style>p{x:1}</style><p>Server &amp; router down</p></html>", "html")
    text = parsed(msg.as_bytes()).text
    assert "Server & router down" in text
    assert "<p>" not in text and "x:1" not in text


# ---- attachments ------------------------------------------------------------------------------


def test_attachments_are_extracted_with_name_type_size_and_sha256() -> None:
    pdf = b"%PDF-1.4 a small report"
    message = parsed(with_attachments((pdf, "application/pdf", "report.pdf")))
    (att,) = message.attachments
    assert (att.filename, att.content_type, att.size) == ("report.pdf", "application/pdf", len(pdf))
    assert att.sha256 == hashlib.sha256(pdf).hexdigest()
    assert att.content == pdf
    assert message.text.strip() == "The logs are attached."


def test_an_attachment_over_the_cap_is_recorded_without_its_content() -> None:
    small, big = b"s" * 100, os.urandom(5000)
    message = parsed(
        with_attachments(
            (small, "text/plain", "small.txt"), (big, "application/octet-stream", "big.bin")
        ),
        max_attachment=1000,
    )
    by_name = {a.filename: a for a in message.attachments}
    assert by_name["small.txt"].content == small
    assert by_name["big.bin"].content is None
    assert by_name["big.bin"].size == len(big)
    assert by_name["big.bin"].sha256 == hashlib.sha256(big).hexdigest()


def test_a_path_traversal_attachment_name_is_sanitised() -> None:
    names = [
        "../../etc/passwd",
        "..\\..\\windows\\system32\\evil.dll",
        "/abs/x.sh",
        "..",
        'a<>:"|?*b',
    ]
    raw = with_attachments(*((b"x", "application/octet-stream", n) for n in names))
    filenames = [a.filename for a in parsed(raw).attachments]
    assert filenames[:3] == ["passwd", "evil.dll", "x.sh"]
    for name in filenames:
        assert "/" not in name and "\\" not in name
        assert name not in ("", ".", "..")
        assert not any(c in name for c in '<>:"|?*')


def test_a_25_mib_attachment_parses_whole_within_the_memory_budget() -> None:
    """Memory, not time: speed lives in bench/ (bench/smtp_memory.py, bench/stage_budgets.py),
    never in an assertion that a loaded machine can fail."""
    data = os.urandom(25 * MiB)
    raw = with_attachments((data, "application/zip", "backup.zip"))
    assert len(raw) > 33 * MiB  # base64 on the wire, as an MTA delivers it
    tracemalloc.start()
    try:
        message = parsed(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (att,) = message.attachments
    assert att.size == len(data)
    assert att.sha256 == hashlib.sha256(data).hexdigest()
    assert att.content is not None  # under the 30 MiB cap
    # A copy per line or a stray decode of the whole body would blow past this bound.
    assert peak < 12 * len(raw), f"peak {peak / MiB:.0f} MiB for a {len(raw) / MiB:.0f} MiB message"


# ---- is this a message at all -----------------------------------------------------------------


def test_looks_like_message_refuses_empty_binary_and_headerless_input() -> None:
    assert not looks_like_message(b"")
    assert not looks_like_message(b"\r\n\r\n")
    assert not looks_like_message(OLE_HEADER + bytes(504) + b"Subject: x\n")
    assert not looks_like_message(b"Hello,\n\nthe printer is broken again.\nDana\n")
    assert not looks_like_message(base64.b64encode(os.urandom(300)))


def test_looks_like_message_accepts_normal_and_mbox_style_mail() -> None:
    raw = make_email()
    assert looks_like_message(raw)
    assert looks_like_message(raw.replace(b"\n", b"\r\n"))
    assert looks_like_message(b"From dana@acme-clinic.example Mon Nov 23 10:00:00 2026\n" + raw)
    assert looks_like_message(b"Received: from mx by relay; Mon, 23 Nov 2026\n" + raw)


# ---- never raises -----------------------------------------------------------------------------

HEADER_BLOCK = (
    b"From: Dana <dana@acme-clinic.example>\r\nTo: support@example.com\r\n"
    b"Subject: =?utf-8?q?fuzz?=\r\nMessage-ID: <fuzz@x>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
)

MIME_FRAGMENTS = st.sampled_from(
    [
        b"--b1\r\n",
        b"--b1--\r\n",
        b"Content-Type: text/plain; charset=x-unknown\r\n\r\n",
        b"Content-Type: text/html; charset=utf-8\r\n\r\n",
        b"Content-Transfer-Encoding: base64\r\n\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
        b'Content-Disposition: attachment; filename="../x"\r\n\r\n',
        b"Content-Type: multipart/alternative; boundary=b2\r\n\r\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"=?utf-8?b?////?=",
        b"=E9=\r\n",
        b"\r\n\r\n",
        b"\xff\xfe\x00",
    ]
)


def check_never_raises(raw: bytes) -> None:
    message = parsed(raw)
    assert message.dedup_key
    assert message.dedup_key.startswith(("email:", "email-nomid:"))
    assert message.raw_size == len(raw)
    assert isinstance(message.text, str) and isinstance(message.subject, str)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    check_never_raises(raw)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=200), MIME_FRAGMENTS), max_size=30))
def test_parse_never_raises_on_arbitrary_mime_after_a_valid_header_block(
    pieces: list[bytes],
) -> None:
    check_never_raises(HEADER_BLOCK + b"".join(pieces))
