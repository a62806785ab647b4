"""Large base64 bodies are decoded straight from the raw bytes (issue 20 item 5), and the parse
finds exactly what it finds without that: the same text, the same attachments byte for byte, the
same defects, an attached message kept as it arrived. Each case is parsed twice, with lifting
and with it switched off (LIFT_BYTES above the message's size), and the results compared."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from gateway.intake.spool import Envelope
from gateway.message import ParsedMessage
from gateway.stages import mime_lift
from gateway.stages.mime_lift import lift
from gateway.stages.parse import body_hash, parse

ENVELOPE = Envelope(
    channel="smtp",
    received_at=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),  # any instant: the parse reads none
    mail_from="dana@acme-clinic.example",
    recipients=("support@example.com",),
)
BIG = 400 * 1024  # over LIFT_BYTES once base64-encoded


def b64(data: bytes, eol: bytes = b"\r\n") -> bytes:
    return base64.encodebytes(data).replace(b"\n", eol)


def headers(eol: bytes = b"\r\n", ctype: bytes = b"multipart/mixed; boundary=b1") -> bytes:
    lines = [
        b"From: Dana <dana@acme-clinic.example>",
        b"To: support@example.com",
        b"Subject: the core dump",
        b"Message-ID: <dump@acme-clinic.example>",
        b"MIME-Version: 1.0",
        b"Content-Type: " + ctype,
    ]
    return eol.join(lines) + eol + eol


def multipart(payload: bytes, eol: bytes = b"\r\n", boundary: bytes = b"b1") -> bytes:
    return (
        headers(eol).replace(b"b1", boundary)
        + eol.join(
            [
                b"--" + boundary,
                b"Content-Type: text/plain; charset=utf-8",
                b"",
                b"The dump is attached.",
                b"--" + boundary,
                b"Content-Type: application/octet-stream; name=core",
                b"Content-Transfer-Encoding: base64",
                b"",
                b"",
            ]
        )
        + b64(payload, eol)
        + b"--"
        + boundary
        + b"--"
        + eol
    )


def single_part(payload: bytes) -> bytes:
    return (
        headers(ctype=b"application/octet-stream; name=core.bin")
        .replace(b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
        + b64(payload)
    )


def attached_message(payload: bytes) -> bytes:
    inner = multipart(payload, boundary=b"inner")
    return (
        headers()
        + b"--b1\r\nContent-Type: text/plain\r\n\r\nForwarding the customer's mail.\r\n"
        + b"--b1\r\nContent-Type: message/rfc822\r\n\r\n"
        + inner
        + b"--b1--\r\n"
    )


def text_with_a_long_run(payload: bytes) -> bytes:
    """A plain part (no transfer encoding) whose last paragraph is a long run of base64-looking
    lines, as a pasted key or dump is: lifted, then given back inside the part's text."""
    return (
        headers()
        + b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + b"Here is the key we use:\r\n\r\n"
        + b64(payload)
        + b"--b1--\r\n"
    )


def parsed(raw: bytes) -> ParsedMessage:
    return parse(raw, ENVELOPE, "entry-1", max_attachment=50 * 1024 * 1024)


def parsed_without_lifting(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> ParsedMessage:
    with monkeypatch.context() as patch:
        patch.setattr(mime_lift, "LIFT_BYTES", len(raw) + 1)
        return parsed(raw)


PAYLOAD = os.urandom(BIG)
CASES: dict[str, Callable[[], bytes]] = {
    "multipart, CRLF": lambda: multipart(PAYLOAD),
    "multipart, LF only": lambda: multipart(PAYLOAD, b"\n"),
    "a single base64 part, no closing boundary": lambda: single_part(PAYLOAD),
    "an attached message holding the attachment": lambda: attached_message(PAYLOAD),
    "plain text with a long base64-looking paragraph": lambda: text_with_a_long_run(PAYLOAD),
    "two attachments": lambda: multipart(PAYLOAD).replace(
        b"--b1--", b"--b1\r\nContent-Type: image/png; name=shot.png\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(PAYLOAD[::-1]) + b"--b1--"
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_lifting_changes_nothing_the_parse_finds(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = CASES[case]()
    assert lift(raw).spans, "the case must exercise lifting"
    lifted, plain = parsed(raw), parsed_without_lifting(raw, monkeypatch)
    assert lifted.text == plain.text
    assert lifted.parse_defects == plain.parse_defects
    assert lifted.defects == plain.defects
    assert lifted.dedup_key == plain.dedup_key
    assert [(a.filename, a.content_type, a.size, a.sha256) for a in lifted.attachments] == [
        (a.filename, a.content_type, a.size, a.sha256) for a in plain.attachments
    ]
    assert [a.content for a in lifted.attachments] == [a.content for a in plain.attachments]


def test_a_large_attachment_is_decoded_whole_and_the_raw_message_is_untouched() -> None:
    raw = multipart(PAYLOAD)
    before = hashlib.sha256(raw).hexdigest()
    message = parsed(raw)
    (dump,) = [a for a in message.attachments if a.filename == "core"]
    assert dump.content == PAYLOAD and isinstance(dump.content, bytes)
    assert message.text.strip() == "The dump is attached."
    assert message.raw_sha256 == before == hashlib.sha256(raw).hexdigest()


def test_an_attached_message_is_kept_as_it_arrived_not_with_the_token() -> None:
    message = parsed(attached_message(PAYLOAD))
    (eml,) = [a for a in message.attachments if a.content_type == "message/rfc822"]
    assert eml.content is not None
    # Written back by the stdlib's generator, which ends every line with LF.
    assert b"GWLIFT" not in eml.content and b64(PAYLOAD, b"\n") in eml.content
    assert any(a.content == PAYLOAD for a in message.attachments)


def test_the_text_of_a_message_that_quotes_a_token_like_string_is_left_alone() -> None:
    # Tokens carry a random nonce: a message cannot name one that the parse will substitute.
    raw = multipart(PAYLOAD).replace(b"The dump is attached.", b"GWLIFT0000000000000000000")
    assert parsed(raw).text.strip() == "GWLIFT0000000000000000000"


def test_small_messages_are_never_scanned() -> None:
    raw = multipart(os.urandom(1024))
    assert lift(raw).skeleton is raw and not lift(raw).spans


def test_a_broken_base64_body_is_repaired_the_same_way_lifted_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = b64(PAYLOAD)
    raw = multipart(PAYLOAD).replace(body, body[:-7] + b"\r\n")  # padding cut off
    lifted, plain = parsed(raw), parsed_without_lifting(raw, monkeypatch)
    assert lifted.parse_defects == plain.parse_defects
    assert [a.content for a in lifted.attachments] == [a.content for a in plain.attachments]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"short\r\n\r\n \t",
        b"x\r\n" * 600_000 + b" \r\n\r\n",  # CRLFs across the hash's 1 MiB chunks
        (b"y" * (1024 * 1024 - 1) + b"\r\n") * 3,  # a CR as the last byte of each chunk
        b"mixed\nline\r\nendings\r\n\n",
    ],
)
def test_the_body_hash_folds_crlf_and_trailing_space_whatever_the_size(body: bytes) -> None:
    raw = b"Subject: x\r\n\r\n" + body
    expected = hashlib.sha256(body.replace(b"\r\n", b"\n").rstrip()).hexdigest()[:32]
    assert body_hash(raw) == expected
