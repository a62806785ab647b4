"""Issue 19, items 1-9, each as a hand-made message: the parse keeps every attachment, every
body and every encoded word, and whatever it had to repair or guess is a ParseDefect on the
message, never silent. (Item 10 and the CLI side of item 9: tests/mime/test_ingest_refusals.py;
defects on the ticket, in metrics and in the log: tests/mime/test_defects_are_visible.py.)"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

from gateway.intake.rawmail import looks_like_message
from gateway.intake.spool import Envelope
from gateway.message import ParsedMessage
from gateway.stages.parse import parse

MAX_ATTACHMENT = 30 * 1024 * 1024
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"
HEAD = (
    b"From: Dana Reyes <dana@acme-clinic.example>\n"
    b"To: support@example.com\n"
    b"Message-ID: <case@acme-clinic.example>\n"
    b"Date: Mon, 23 Nov 2026 09:00:00 +0000\n"
)


def parsed(raw: bytes) -> ParsedMessage:
    envelope = Envelope(
        channel="smtp",
        received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
        mail_from="dana@acme-clinic.example",
        recipients=("support@example.com",),
    )
    return parse(raw, envelope, "spool-1", MAX_ATTACHMENT)


def mixed(subject: bytes, *parts: bytes, boundary: bytes = b"b") -> bytes:
    body = b"".join(b"--" + boundary + b"\n" + p + b"\n" for p in parts)
    return (
        HEAD
        + b"Subject: "
        + subject
        + b'\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\n\n'
        + body
        + b"--"
        + boundary
        + b"--\n"
    )


def kinds(message: ParsedMessage) -> set[str]:
    return {d.kind for d in message.parse_defects}


def names(message: ParsedMessage) -> list[tuple[str, str, int]]:
    return [(a.filename, a.content_type, a.size) for a in message.attachments]


PLAIN = b"Content-Type: text/plain; charset=utf-8\n\nThe invoices are attached."
PDF_B64 = base64.encodebytes(PDF)


# ---- item 1: raw 8-bit attachment names --------------------------------------------------------


def test_raw_8bit_attachment_names_keep_every_attachment_with_its_decoded_name() -> None:
    raw = mixed(
        b"Rechnungen",
        PLAIN,
        b'Content-Type: application/pdf; name="Rechnung M\xc3\xa4rz.pdf"\n'
        b'Content-Disposition: attachment; filename="Rechnung M\xc3\xa4rz.pdf"\n'
        b"Content-Transfer-Encoding: base64\n\n" + PDF_B64,
        b"Content-Type: application/pdf\n"
        b'Content-Disposition: attachment; filename="Geb\xfchr.pdf"\n'
        b"Content-Transfer-Encoding: base64\n\n" + PDF_B64,
    )
    message = parsed(raw)
    assert names(message) == [
        ("Rechnung März.pdf", "application/pdf", len(PDF)),  # raw UTF-8
        ("Gebühr.pdf", "application/pdf", len(PDF)),  # raw Latin-1
    ]
    assert all(a.content == PDF for a in message.attachments)
    assert message.text.strip() == "The invoices are attached."
    assert message.parse_defects == ()  # nothing was lost: nothing to report


def test_rfc2231_and_rfc2047_attachment_names_are_decoded() -> None:
    raw = mixed(
        b"Rechnungen",
        PLAIN,
        b"Content-Type: application/pdf\n"
        b"Content-Disposition: attachment; filename*=utf-8''Rechnung%20M%C3%A4rz.pdf\n"
        b"Content-Transfer-Encoding: base64\n\n" + PDF_B64,
        b'Content-Type: application/pdf; name="=?iso-8859-1?q?Geb=FChr.pdf?="\n'
        b"Content-Transfer-Encoding: base64\n\n" + PDF_B64,
    )
    assert [n for n, _, _ in names(parsed(raw))] == ["Rechnung März.pdf", "Gebühr.pdf"]


# ---- item 2: an empty text/plain beside the HTML -----------------------------------------------


def test_an_empty_plain_part_gives_way_to_the_html_text() -> None:
    raw = (
        HEAD + b"Subject: URGENT\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/alternative; boundary="alt"\n\n'
        b"--alt\nContent-Type: text/plain; charset=utf-8\n\n\n"
        b"--alt\nContent-Type: text/html; charset=utf-8\n\n"
        b"<html><body><p>Our <b>production server is down</b> since 08:40.</p></body></html>\n"
        b"--alt--\n"
    )
    assert "production server is down since 08:40." in parsed(raw).text


# ---- item 3: raw 8-bit bytes inside an encoded word --------------------------------------------


def test_raw_8bit_bytes_inside_an_encoded_word_are_decoded_in_its_charset() -> None:
    raw = (
        HEAD + b"Subject: =?iso-8859-1?q?Caf\xe9_geschlossen?= =?utf-8?q?M\xc3\xa4rz?=\n\n"
        b"The body.\n"
    )
    message = parsed(raw)
    assert message.subject == "Café geschlossenMärz"  # adjacent encoded words join (RFC 2047)
    assert "\ufffd" not in message.subject


def test_an_encoded_word_with_missing_base64_padding_is_decoded() -> None:
    raw = HEAD + b"Subject: =?utf-8?b?U2VydmVyIGRvd24gaW4gTcO8bmNoZW4?=\n\nThe body.\n"
    assert parsed(raw).subject == "Server down in München"


# ---- item 4: a Content-Transfer-Encoding value with trailing spaces ----------------------------


def test_quoted_printable_with_trailing_spaces_in_its_header_is_decoded() -> None:
    raw = (
        HEAD + b"Subject: Gruesse\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable   \n\n"
        b"Gr=C3=BC=C3=9Fe aus M=C3=BCnchen, der Drucker ist=\n offline.\n"
    )
    assert parsed(raw).text.strip() == "Grüße aus München, der Drucker ist offline."


# ---- item 5: a wrong or missing charset ---------------------------------------------------------


def test_text_in_another_charset_than_declared_is_detected_not_replaced() -> None:
    russian = "Сервер не отвечает с утра, клиенты не могут оплатить заказы. " * 4
    raw = (
        HEAD + b"Subject: server\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
        + russian.encode("cp1251")
    )
    message = parsed(raw)
    assert "\ufffd" not in message.text
    assert "Сервер не отвечает" in message.text
    assert "charset-detected" in kinds(message)


def test_utf16_text_labelled_ascii_is_read_as_utf16() -> None:
    text = "The scanner in room 4 prints blank pages since the update."
    raw = (
        HEAD
        + b"Subject: scanner\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
        + text.encode("utf-16")
    )
    message = parsed(raw)
    assert message.text.strip() == text


def test_latin1_labelled_windows_1252_keeps_the_euro_sign_not_a_raw_c1_control() -> None:
    raw = (
        HEAD + b"Subject: invoice\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=iso-8859-1\n\nThe invoice says \x80 120.\n"
    )
    text = parsed(raw).text
    assert "€ 120" in text
    assert "\x80" not in text


def test_text_that_no_charset_decodes_is_replaced_and_said_so() -> None:
    raw = (
        HEAD + b"Subject: odd\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-16\n\n"
        b"\xff\xfe\x00\xd8odd"  # a UTF-16 BOM, then a lone surrogate
    )
    assert "text-undecodable" in kinds(parsed(raw))


# ---- item 6: attached messages ------------------------------------------------------------------

INNER = (
    b"From: Sam Lee <sam@acme-clinic.example>\nSubject: Backup failed\n"
    b"Date: Sun, 22 Nov 2026 23:00:00 +0000\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/alternative; boundary="in"\n\n'
    b"--in\nContent-Type: text/plain\n\nThe nightly backup failed at 02:00.\n"
    b"--in\nContent-Type: text/html\n\n<p>The nightly backup failed at 02:00.</p>\n--in--\n"
)


def test_an_attached_message_is_kept_as_eml_and_its_text_follows_a_separator() -> None:
    raw = mixed(
        b"Fwd: Backup failed",
        b"Content-Type: text/plain\n\nSee the forwarded message.",
        b"Content-Type: message/rfc822\n\n" + INNER,
    )
    message = parsed(raw)
    (eml,) = message.attachments
    assert (eml.filename, eml.content_type) == ("Backup failed.eml", "message/rfc822")
    assert eml.content is not None and b"The nightly backup failed at 02:00." in eml.content
    assert eml.content.startswith(b"From: Sam Lee <sam@acme-clinic.example>")
    body, attached = message.text.split("---------- attached message: Backup failed.eml", 1)
    assert body.strip() == "See the forwarded message."
    assert "From: Sam Lee <sam@acme-clinic.example>" in attached
    assert "Subject: Backup failed" in attached
    assert attached.count("The nightly backup failed at 02:00.") == 1  # plain, not plain + html


def test_messages_in_a_digest_are_eml_attachments_never_0_byte_multipart_files() -> None:
    second = INNER.replace(b"Backup failed", b"Disk full").replace(b"nightly backup", b"disk")
    raw = (
        HEAD + b"Subject: Digest\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/digest; boundary="d"\n\n'
        b"--d\n\n" + INNER + b"\n--d\n\n" + second + b"\n--d--\n"
    )
    message = parsed(raw)
    assert [(n, t) for n, t, _ in names(message)] == [
        ("Backup failed.eml", "message/rfc822"),
        ("Disk full.eml", "message/rfc822"),
    ]
    assert all(a.size > 0 for a in message.attachments)
    assert "The nightly backup failed" in message.text and "The disk failed" in message.text


# ---- item 7: broken boundaries ------------------------------------------------------------------


def test_a_mistyped_boundary_is_recovered_and_no_0_byte_multipart_attachment_appears() -> None:
    csv = b"Content-Type: text/csv; name=log.csv\n\na,b\n1,2"
    raw = mixed(b"Logs", PLAIN, csv, boundary=b"real")
    raw = raw.replace(b'boundary="real"', b'boundary="declared-but-never-used"')
    message = parsed(raw)
    assert message.text.strip() == "The invoices are attached."
    assert names(message) == [("log.csv", "text/csv", len(b"a,b\n1,2"))]
    assert "structure-repaired" in kinds(message)


def test_a_multipart_without_any_boundary_line_keeps_its_body_as_text() -> None:
    raw = (
        HEAD + b'Subject: down\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="x"\n\n'
        b"The mail server is down for everyone.\n"
    )
    message = parsed(raw)
    assert message.text.strip() == "The mail server is down for everyone."
    assert message.attachments == ()
    assert "structure-repaired" in kinds(message)


def test_a_mistyped_close_delimiter_does_not_leak_into_the_text() -> None:
    raw = mixed(b"x", b"Content-Type: text/plain\n\nThe text.\n--b-\n", boundary=b"b")
    raw = raw.removesuffix(b"--b--\n")
    message = parsed(raw)
    assert message.text.strip() == "The text."
    assert "boundary-in-text" in kinds(message)


def test_a_junk_content_type_is_repaired_and_said_so() -> None:
    raw = mixed(
        b"x",
        PLAIN,
        b"Content-Type: image/png name=shot.png\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(b"\x89PNG\r\n"),
        b"Content-Type: ???\nContent-Disposition: attachment; filename=notes.bin\n\nabc",
    )
    message = parsed(raw)
    assert [(n, t) for n, t, _ in names(message)] == [
        ("attachment", "image/png"),
        ("notes.bin", "application/octet-stream"),
    ]
    assert "content-type-invalid" in kinds(message)


# ---- item 8: base64 with stray characters -------------------------------------------------------


def test_base64_with_stray_characters_is_decoded_and_said_so() -> None:
    encoded = base64.b64encode(PDF)
    damaged = encoded[:20] + b" !*" + encoded[20:40] + b"\n\x85" + encoded[40:] + b"\n-- \nsig\n"
    raw = mixed(
        b"x",
        PLAIN,
        b"Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\n"
        + damaged,
    )
    (attachment,) = parsed(raw).attachments
    assert attachment.sha256 == hashlib.sha256(PDF).hexdigest()
    assert "base64-repaired" in kinds(parsed(raw))


def test_base64_with_bad_padding_is_decoded_not_stored_as_sent() -> None:
    encoded = base64.b64encode(PDF).rstrip(b"=") + b"A"  # one character too many, no padding
    raw = mixed(
        b"x",
        PLAIN,
        b"Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\n"
        + encoded,
    )
    (attachment,) = parsed(raw).attachments
    assert attachment.content == PDF


# ---- item 9: valid messages that looked like non-messages ---------------------------------------


def test_a_utf16_text_part_with_nul_bytes_is_a_message() -> None:
    raw = (
        HEAD + b"Subject: utf16\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-16\n\n"
        + "Der Server ist down.".encode("utf-16")
    )
    assert looks_like_message(raw)
    assert parsed(raw).text == "Der Server ist down."


def test_a_garbled_first_header_line_is_cut_and_the_headers_recovered() -> None:
    raw = b"\x1b[0m\xff garbage line\n" + HEAD + b"Subject: Printer\n\nThe printer is offline.\n"
    assert looks_like_message(raw)
    message = parsed(raw)
    assert (message.sender, message.subject) == ("dana@acme-clinic.example", "Printer")
    assert message.text.strip() == "The printer is offline."
    assert "headers-repaired" in kinds(message)


def test_a_first_header_line_with_a_leading_space_is_recovered() -> None:
    raw = b" " + HEAD + b"Subject: Printer\n\nThe printer is offline.\n"
    assert looks_like_message(raw)
    message = parsed(raw)
    assert (message.sender, message.subject) == ("dana@acme-clinic.example", "Printer")
    assert "headers-repaired" in kinds(message)


def test_bytes_with_no_header_block_are_still_not_a_message() -> None:
    assert not looks_like_message(b"")
    assert not looks_like_message(b"Just a note: call me back.\n\nThanks\n")
    assert not looks_like_message(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64) + b"From: x\n")


# ---- outcome 2: what cannot be decoded is kept raw, with a defect ------------------------------


def test_a_part_in_an_unknown_transfer_encoding_is_kept_as_sent_and_said_so() -> None:
    raw = mixed(
        b"x",
        PLAIN,
        b"Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: x-gzip64\n\n"
        b"H4sIAAAAAAAAA",
    )
    message = parsed(raw)
    (attachment,) = message.attachments
    assert attachment.content == b"H4sIAAAAAAAAA"
    assert [d.encoded() for d in message.parse_defects] == [
        "transfer-encoding-unknown(a.pdf: x-gzip64)"
    ]


def test_a_uuencoded_part_that_will_not_decode_is_kept_raw_and_said_so() -> None:
    body = b"begin 644 a.bin\nzzzz this is no uuencode at all {}|~\nend\n"
    raw = mixed(
        b"x",
        PLAIN,
        b"Content-Type: application/octet-stream; name=a.bin\n"
        b"Content-Transfer-Encoding: x-uuencode\n\n" + body,
    )
    message = parsed(raw)
    assert message.attachments[0].content == body
    assert "part-undecodable" in kinds(message)


def test_an_attachment_over_the_cap_is_listed_without_content_and_said_so() -> None:
    raw = mixed(
        b"x", PLAIN, b"Content-Type: application/pdf; name=big.pdf\n\n" + b"x" * 2048
    )
    envelope = Envelope(
        channel="smtp",
        received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
        mail_from="dana@acme-clinic.example",
        recipients=("support@example.com",),
    )
    message = parse(raw, envelope, "spool-1", 1024)
    (attachment,) = message.attachments
    assert (attachment.size, attachment.content) == (2048, None)
    assert [d.encoded() for d in message.parse_defects] == [
        "attachment-not-kept(big.pdf: 2048 bytes)"
    ]
