"""Stage 1: raw bytes -> ParsedMessage. Never raises for any input bytes.

Owns MIME parsing, header decoding with bad charsets, text extraction, attachment extraction
with the per-attachment cap, and the dedup identity of an email. The stdlib parser (compat32,
which records defects instead of raising) walks every message; mail-parser recovers the text of
the rare message the stdlib cannot walk. (mail-parser first cost 5.5 ms a message measured on
the corpus for a result we then re-walked: see README "Dependencies".) Never touches storage;
the raw bytes stay in the spool whatever happens here, so a parse that degrades loses nothing.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import html
import logging
import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr, parsedate_to_datetime

from gateway.intake.rawmail import strip_mbox_line
from gateway.intake.spool import Envelope
from gateway.message import Attachment, ParsedMessage

# mail-parser logs every MIME part it does not handle at WARNING; that is noise, not news.
logging.getLogger("mailparser").setLevel(logging.ERROR)
# aiosmtpd logs every SMTP command at INFO: a transcript per message is noise in a daemon log.
logging.getLogger("mail.log").setLevel(logging.WARNING)

TEXT_LIMIT = 256 * 1024  # classifier and storage need the start of the text, not all of it

_MSGID = re.compile(r"<([^<>\s]+)>")
_TAG = re.compile(r"<[^>]+>")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_STYLE = re.compile(r"<(script|style)\b.*?</\1>", re.S | re.I)


class NotAMessageError(ValueError):
    """The bytes are not an RFC 5322 message at all (e.g. an Outlook .msg, an empty file)."""


def _split_body(raw: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i >= 0:
            return raw[i + len(sep) :]
    return b""


def body_hash(raw: bytes) -> str:
    """Hash of the body, the same whichever way the message reached us.

    Transports add headers (Received, Delivered-To, Return-Path) and may change line endings, so
    the identity uses the body only, with CRLF folded to LF and trailing space dropped.
    """
    body = _split_body(strip_mbox_line(raw)).replace(b"\r\n", b"\n").rstrip()
    return hashlib.sha256(body).hexdigest()[:32]


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


def _decode(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if "=?" in text:
        try:
            text = str(make_header(decode_header(text)))
        except Exception:  # bad charset or broken encoded-word: keep the raw text
            pass
    # NUL never belongs in text we store (PostgreSQL refuses it in TEXT: the message would be
    # quarantined); split() folds CR/LF, so no decoded value can carry a header break.
    return " ".join(text.replace("\x00", "").split())


def _msgids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(m.lower() for m in _MSGID.findall(value.replace("\x00", "")))


def _one_msgid(value: str | None) -> str | None:
    ids = _msgids(value)
    if ids:
        return ids[0]
    value = (value or "").replace("\x00", "").strip().strip("<>").strip()
    # Any whitespace (a folded header keeps its CRLF) means this is no id: echoed into our
    # reply's In-Reply-To it would break the header (tests/hostile/test_injection.py).
    return value.lower() if value and value.split() == [value] else None


def html_to_text(markup: str) -> str:
    text = _STYLE.sub(" ", markup)
    text = re.sub(r"<br\s*/?>|</p>|</div>|</tr>", "\n", text, flags=re.I)
    text = html.unescape(_TAG.sub(" ", text))
    return re.sub(r"[ \t]+", " ", text).strip()


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


def _payload_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # unknown charset name: latin-1 never fails and keeps every byte
        return payload.decode("latin-1")


def _walk(msg: Message, max_attachment: int) -> tuple[str, list[Attachment], list[str]]:
    plain: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    defects: list[str] = [type(d).__name__ for d in msg.defects]
    parts = 0
    for part in msg.walk():
        parts += 1
        if parts > 5000:
            defects.append("TooManyParts")
            break
        if part.is_multipart():
            defects.extend(type(d).__name__ for d in part.defects)
            continue
        ctype = part.get_content_type()
        disposition = (part.get("Content-Disposition") or "").lower()
        filename = part.get_filename()
        if (
            ctype in ("text/plain", "text/html")
            and "attachment" not in disposition
            and not filename
        ):
            text = _payload_text(part)
            (plain if ctype == "text/plain" else htmls).append(text)
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        keep = len(data) <= max_attachment
        attachments.append(
            Attachment(
                filename=_safe_filename(_decode(filename) or "attachment"),
                content_type=ctype.replace("\x00", ""),
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                content=data if keep else None,
            )
        )
    text = "\n".join(plain) if plain else html_to_text("\n".join(htmls))
    return text, attachments, defects


def _safe_filename(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')
    return name.strip(" .")[:200] or "attachment"


def _mailparser_text(data: bytes) -> tuple[str, list[str]]:
    """mail-parser's tolerant decoding, for the rare message the stdlib cannot walk."""
    try:
        import mailparser

        parsed = mailparser.parse_from_bytes(data)
        text = "\n".join(parsed.text_plain) or html_to_text("\n".join(parsed.text_html))
        return text, ["StdlibWalkFailed", "ParsedByMailParser"]
    except Exception as exc:  # both parsers gave up: headers and raw bytes are still kept
        return "", ["StdlibWalkFailed", f"MailParserFailed:{type(exc).__name__}"]


def parse(raw: bytes, envelope: Envelope, spool_id: str, max_attachment: int) -> ParsedMessage:
    """Parse whatever bytes arrived. Degrades (defects recorded) rather than failing."""
    if envelope.channel.startswith("twilio"):  # Twilio: a spooled webhook, not RFC 5322
        from gateway.stages.parse_twilio import parse_twilio

        return parse_twilio(raw, envelope, spool_id)
    data = strip_mbox_line(raw)
    # The stdlib parser in compat32 mode never raises on bytes: it records defects instead.
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    defects: list[str] = []
    headers: list[tuple[str, str]] = []
    for name, value in msg.items():
        headers.append((str(name).lower(), _decode(value)))
    hdr = dict(reversed(headers))  # first occurrence wins
    name, addr = _sender(str(msg.get("From") or ""), hdr.get("from", ""))
    sender = addr.strip().lower()
    if not sender and envelope.mail_from:
        sender = envelope.mail_from.replace("\x00", "").lower()
    message_id = _one_msgid(msg.get("Message-ID") and str(msg.get("Message-ID")))
    date: datetime | None = None
    try:
        raw_date = hdr.get("date")
        if raw_date:
            date = parsedate_to_datetime(raw_date)
            if date.tzinfo is None:
                date = date.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError):
        defects.append("BadDate")
    try:
        text, attachments, part_defects = _walk(msg, max_attachment)
    except Exception:  # a part the stdlib cannot walk: fall back to mail-parser for the text
        text, part_defects = _mailparser_text(data)
        attachments = []
    defects.extend(part_defects)
    subject = hdr.get("subject", "")
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
        sender_name=_decode(name),
        subject=subject[:998],
        date=date,
        text=text[:TEXT_LIMIT].replace("\x00", ""),
        headers=tuple(headers),
        attachments=tuple(attachments),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        raw_size=len(raw),
        dedup_key=envelope.channel_key
        or dedup_key_for_email(raw, message_id, sender, hdr.get("date", ""), subject),
        defects=tuple(dict.fromkeys(defects)),
    )
