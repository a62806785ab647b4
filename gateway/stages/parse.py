"""Stage 1: raw bytes -> ParsedMessage. Never raises for any input bytes.

Owns the order of parsing (header-start repair, the stdlib's compat32 tree, header decoding,
the walk), the ParsedMessage it yields and the dedup identity of an email. The MIME walk is
gateway/stages/mime_walk.py, the lenient decoding of bytes gateway/stages/mime_text.py;
mail-parser recovers the text should the walk ever fail. Whatever the parse loses or alters is
a ParseDefect on the result, never silent (issue 19). Never touches storage; the raw bytes stay
in the spool and the blob store whatever happens here, so a parse that degrades loses nothing.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import re
from datetime import UTC, datetime
from email.utils import getaddresses, parseaddr, parsedate_to_datetime

from gateway.intake.rawmail import repair_header_start, strip_mbox_line
from gateway.intake.spool import Envelope
from gateway.message import ParseDefect, ParsedMessage
from gateway.stages.mime_lift import lift
from gateway.stages.mime_text import decode_header_bytes, html_to_text, utf8_or_cp1252
from gateway.stages.mime_walk import header_bytes, walk

# mail-parser logs every MIME part it does not handle at WARNING; that is noise, not news.
logging.getLogger("mailparser").setLevel(logging.ERROR)
# aiosmtpd logs every SMTP command at INFO: a transcript per message is noise in a daemon log.
logging.getLogger("mail.log").setLevel(logging.WARNING)

TEXT_LIMIT = 256 * 1024  # classifier and storage need the start of the text, not all of it

_MSGID = re.compile(r"<([^<>\s]+)>")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


class NotAMessageError(ValueError):
    """The bytes are not an RFC 5322 message at all (e.g. an Outlook .msg, an empty file)."""


def _body_start(raw: bytes) -> int:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i >= 0:
            return i + len(sep)
    return len(raw)


_HASH_CHUNK = 1024 * 1024


def body_hash(raw: bytes) -> str:
    """Hash of the body, the same whichever way the message reached us.

    Transports add headers (Received, Delivered-To, Return-Path) and may change line endings, so
    the identity uses the body only, with CRLF folded to LF and trailing space dropped. Hashed a
    megabyte at a time: folding a 34 MB body whole took two copies of it (issue 20 item 5).
    """
    data = strip_mbox_line(raw)
    start, end = _body_start(data), _rstripped_length(data)
    digest = hashlib.sha256()
    view = memoryview(data)
    while start < end:
        stop = min(start + _HASH_CHUNK, end)
        if data[stop - 1 : stop] == b"\r" and stop < end:
            stop += 1  # never split a CRLF between two chunks
        digest.update(bytes(view[start:stop]).replace(b"\r\n", b"\n"))
        start = stop
    return digest.hexdigest()[:32]


def _rstripped_length(data: bytes) -> int:
    """len(data.rstrip()) without the copy."""
    end = len(data)
    while end > 0 and data[end - 1 : end].isspace():
        end -= 1
    return end


def dedup_key_for_email(
    raw: bytes, message_id: str | None, sender: str, date: str, subject: str
) -> str:
    """The dedup identity of an email (DESIGN promise 2).

    Message-ID *and* a body hash: a reused or forged Message-ID on a different message must not
    make us drop it. Without a Message-ID: sender, date, subject and body.
    """
    bh = body_hash(raw)
    if message_id:
        if len(message_id) > 200:
            # The key must fit its column; hashing (never truncating) keeps distinct ids apart.
            message_id = "sha256:" + hashlib.sha256(message_id.encode()).hexdigest()
        return f"email:{message_id}:{bh}"
    digest = hashlib.sha256("\x00".join((sender, date, subject, bh)).encode()).hexdigest()[:40]
    return f"email-nomid:{digest}"


def _decode(value: str) -> str:
    """An already-decoded header value as stored: no NUL (PostgreSQL refuses it in TEXT: the
    message would be quarantined), whitespace folded so no value can carry a header break."""
    return " ".join(value.replace("\x00", "").split())


def _decode_words(value: str) -> str:
    return _decode(decode_header_bytes(value.encode("utf-8", "surrogateescape"))[0])


# RFC 5322's line length: an id longer than this (in UTF-8) cannot have been written on one line
# by a conforming mailer, and would not fit the database's index.
MAX_MSGID_BYTES = 998
_DIGESTED = "sha256:"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # what bounded_msgid makes of an overlong id
MAX_SUBJECT_CHARS = 998  # RFC 5322's line length; the raw message keeps the whole header


def bounded_msgid(msgid: str) -> str:
    """A Message-ID as stored and compared: itself, or for one over MAX_MSGID_BYTES a digest of
    it, the same wherever it appears (Message-ID, In-Reply-To, References), so a reply to such a
    message still threads to it."""
    if len(msgid.encode("utf-8", "surrogateescape")) <= MAX_MSGID_BYTES:
        return msgid
    return _DIGESTED + hashlib.sha256(msgid.encode("utf-8", "surrogateescape")).hexdigest()


def _msgids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(bounded_msgid(m.lower()) for m in _MSGID.findall(value.replace("\x00", "")))


def _one_msgid(value: str | None) -> str | None:
    ids = _msgids(value)
    if ids:
        return ids[0]
    value = (value or "").replace("\x00", "").strip().strip("<>").strip()
    # Any whitespace (a folded header keeps its CRLF) means this is no id: echoed into our
    # reply's In-Reply-To it would break the header (tests/hostile/test_injection.py).
    return bounded_msgid(value.lower()) if value and value.split() == [value] else None


def _sender(raw_from: str, decoded_from: str) -> tuple[str, str]:
    """(display name, still encoded, and address) of a From header.

    The address is read with the encoded-words hidden (RFC 2047 5: an encoded-word is never
    part of an addr-spec): decoding first let a display name like =?utf-8?q?=3Cceo@x=3E?=
    stand in for the real address. Only a From with no address outside its encoded-words (a
    broken mailer encoding the whole header) is read decoded.
    """
    words: list[str] = []

    def hide(match: re.Match[str]) -> str:
        words.append(match.group(0))
        return f"\x01{len(words) - 1}\x01"

    masked = _ENCODED_WORD.sub(hide, " ".join(raw_from.replace("\x00", "").split()))
    name, addr = parseaddr(masked)
    if "@" not in addr or "\x01" in addr:
        name, addr = parseaddr(decoded_from)
        return name, addr
    return re.sub("\x01(\\d+)\x01", lambda m: words[int(m.group(1))], name), addr


def _mailparser_text(data: bytes) -> tuple[str, list[str]]:
    """mail-parser's tolerant decoding, for a message our own walk cannot walk (none known)."""
    try:
        import mailparser

        parsed = mailparser.parse_from_bytes(data)
        text = "\n".join(parsed.text_plain) or html_to_text("\n".join(parsed.text_html))
        return text, ["ParsedByMailParser"]
    except Exception as exc:  # both parsers gave up: headers and raw bytes are still kept
        return "", [f"MailParserFailed:{type(exc).__name__}"]


def parse(raw: bytes, envelope: Envelope, spool_id: str, max_attachment: int) -> ParsedMessage:
    """Parse whatever bytes arrived. Degrades (defects recorded) rather than failing; whatever
    it loses or alters is a ParseDefect on the result (issue 19)."""
    if envelope.channel.startswith("twilio"):  # Twilio: a spooled webhook, not RFC 5322
        from gateway.stages.parse_twilio import parse_twilio

        return parse_twilio(raw, envelope, spool_id)
    data, dropped = repair_header_start(strip_mbox_line(raw))
    found: list[ParseDefect] = []
    if dropped:
        cut = dropped.strip()[:80].decode("utf-8", "replace") or "leading whitespace"
        found.append(ParseDefect("headers-repaired", f"cut before the headers: {cut}"))
    # The stdlib parser in compat32 mode never raises on bytes: it records defects instead.
    # It reads the message with its large base64 bodies lifted out (memory: issue 20 item 5).
    lifted = lift(data)
    msg = email.message_from_bytes(lifted.skeleton, policy=email.policy.compat32)
    notes: list[str] = []
    headers: list[tuple[str, str]] = []
    for name, value in msg.raw_items():
        text, lossy = decode_header_bytes(header_bytes(value))
        if lossy:
            found.append(ParseDefect("header-charset-guessed", str(name)[:40]))
        headers.append((str(name).lower(), _decode(text)))
    hdr = dict(reversed(headers))  # first occurrence wins
    raw_from = utf8_or_cp1252(header_bytes(msg.get("From") or ""))
    name, addr = _sender(raw_from, hdr.get("from", ""))
    sender = addr.strip().lower()
    if not sender and envelope.mail_from:
        sender = envelope.mail_from.replace("\x00", "").lower()
    message_id = _one_msgid(hdr.get("message-id"))
    if message_id is not None and _DIGEST.fullmatch(message_id):
        found.append(ParseDefect("message-id-digested", message_id))
    date: datetime | None = None
    try:
        raw_date = hdr.get("date")
        if raw_date:
            date = parsedate_to_datetime(raw_date)
            if date.tzinfo is None:
                date = date.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError):
        notes.append("BadDate")
    try:
        walked = walk(msg, max_attachment, lifted)
        text, attachments = walked.text, walked.attachments
        found.extend(walked.parse_defects)
        notes.extend(walked.notes)
    except Exception as exc:  # a tree our walk cannot walk: mail-parser recovers the text
        text, fallback_notes = _mailparser_text(data)
        attachments = ()
        found.append(ParseDefect("walk-failed", type(exc).__name__))
        notes.extend(fallback_notes)
    text = text.replace("\x00", "")
    if len(text) > TEXT_LIMIT:
        found.append(ParseDefect("text-truncated", f"{len(text)} characters"))
    subject = hdr.get("subject", "")
    if len(subject) > MAX_SUBJECT_CHARS:
        found.append(ParseDefect("subject-truncated", f"{len(subject)} characters"))
    return ParsedMessage(
        spool_id=spool_id,
        channel=envelope.channel,
        received_at=envelope.received_at,
        envelope_from=envelope.mail_from,
        recipients=envelope.recipients
        or tuple(a.lower() for _, a in getaddresses([hdr.get("to", "")]) if a),
        message_id=message_id,
        in_reply_to=_msgids(hdr.get("in-reply-to")),
        references=_msgids(hdr.get("references")),
        sender=sender,
        sender_name=_decode_words(name),
        subject=subject[:MAX_SUBJECT_CHARS],
        date=date,
        text=text[:TEXT_LIMIT],
        headers=tuple(headers),
        attachments=attachments,
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        raw_size=len(raw),
        dedup_key=envelope.channel_key
        or dedup_key_for_email(raw, message_id, sender, hdr.get("date", ""), subject),
        defects=tuple(dict.fromkeys(notes)),
        parse_defects=tuple(dict.fromkeys(found)),
    )
