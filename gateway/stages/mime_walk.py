"""The MIME tree of a parsed message to its text and attachments, losing nothing silently.

Owns which part is body and which is attachment, attachment names (RFC 2231, RFC 2047, raw
8-bit), attached messages (message/rfc822: kept as an .eml attachment, their text shown after
a separator), and repairing broken structure (issue 19 items 1, 2, 6, 7). Every part that cannot
be read as intended is still kept — as its raw bytes if need be — and said so with a
ParseDefect. Works on the stdlib's compat32 tree (which never raises on bytes) but reads raw
header values itself: compat32 hands back `Header` objects for 8-bit values, which is what made
the old walk raise and drop every attachment. Pure: never does I/O.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import io
import mimetypes
import re
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message

from gateway.message import Attachment, ParseDefect
from gateway.stages.mime_lift import Lifted
from gateway.stages.mime_text import (
    decode_header_bytes,
    decode_text,
    html_to_text,
    transfer_decode,
)

MAX_PARTS = 5000  # flanker's torture test has 3,000; more is an attack, not a message
MAX_DEPTH = 30  # nested attached messages / repaired structures
_CTYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
_BOUNDARY_LINE = re.compile(rb"^--([!-~]{1,200}?)[ \t]*\r?$", re.M)
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")
_ATTACHED_MESSAGE = frozenset({"message/rfc822", "message/global", "message/news"})


@dataclass(frozen=True)
class Walked:
    """What the walk found: the text (attached messages' text after separators), every
    attachment, what was lost or altered, and the stdlib's own defect notes."""

    text: str
    attachments: tuple[Attachment, ...]
    parse_defects: tuple[ParseDefect, ...]
    notes: tuple[str, ...]


@dataclass
class _Found:
    """The walk's working state for one message (attached messages get their own)."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attached_texts: list[str] = field(default_factory=list)
    # Inline text parts that carry a file name: attachments, and the body when nothing else is.
    named_inline: list[str] = field(default_factory=list)


@dataclass
class _Walk:
    max_attachment: int
    lifted: Lifted  # the large bodies the parser never saw (gateway/stages/mime_lift.py)
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[ParseDefect] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts: int = 0
    stopped: bool = False


def raw_header(part: Message, name: str) -> str | None:
    """A header's value as text, read from the raw value: 8-bit bytes as UTF-8, else
    windows-1252; encoded words decoded. None when absent."""
    name = name.lower()
    for key, value in part.raw_items():
        if key.lower() == name:
            return decode_header_bytes(header_bytes(value))[0]
    return None


def header_bytes(value: object) -> bytes:
    """The bytes a header value arrived as (compat32 keeps 8-bit bytes as surrogates)."""
    text = str(value)
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def walk(msg: Message, max_attachment: int, lifted: Lifted | None = None) -> Walked:
    """`msg` parsed from `lifted.skeleton` when large bodies were lifted out of it."""
    state = _Walk(max_attachment, lifted or Lifted(b""))
    text = _message_text(msg, state, depth=0)
    if state.stopped:
        state.defects.append(ParseDefect("too-many-parts", f"after {MAX_PARTS} parts"))
    return Walked(
        text=text,
        attachments=tuple(state.attachments),
        parse_defects=tuple(dict.fromkeys(state.defects)),
        notes=tuple(dict.fromkeys(state.notes)),
    )


def _message_text(msg: Message, state: _Walk, depth: int) -> str:
    found = _Found()
    _part(msg, found, state, depth, ())
    plain = "\n".join(found.plain)
    # An empty text/plain beside the real text in HTML must not win (issue 19 item 2).
    text = plain if plain.strip() else html_to_text("\n".join(found.html))
    if not text.strip():  # `Content-Disposition: inline; filename=msg.txt` is all the text
        text = "\n".join(found.named_inline)
    return "\n\n".join(t for t in (text, *found.attached_texts) if t.strip())


def _params(part: Message) -> Message:
    """A header-only copy of the part's Content-Type and Content-Disposition, decoded, so the
    stdlib's parameter parsing (RFC 2231 included) never meets a `Header` object."""
    headers = Message()
    for name in ("content-type", "content-disposition"):
        value = raw_header(part, name)
        if value is not None:
            headers[name] = " ".join(value.split())
    return headers


def _content_type(part: Message, params: Message, filename: str) -> tuple[str, ParseDefect | None]:
    declared = raw_header(part, "content-type")
    if declared is None or not declared.split(";", 1)[0].strip():
        return part.get_default_type(), None
    token = declared.split(";", 1)[0].strip().lower()
    if _CTYPE.match(token):
        return token, None
    first = token.split(None, 1)[0].strip("\"'") if token.split() else ""
    if _CTYPE.match(first):  # `image/png name=shot.png`: a missing ';' or stray quotes
        return first, ParseDefect("content-type-invalid", declared[:80])
    # Junk (issue 19 item 7): text-like junk is read as text (RFC 2045 5.2), anything else is
    # typed by its name or as octets, and the original value is on the defect.
    if token.startswith("text") and not filename:
        return "text/plain", ParseDefect("content-type-invalid", declared[:80])
    guessed = mimetypes.guess_type(filename)[0] if filename else None
    return guessed or "application/octet-stream", ParseDefect("content-type-invalid", declared[:80])


def _filename(params: Message) -> str:
    name = params.get_filename() or params.get_param("name")
    if isinstance(name, tuple):  # an RFC 2231 value get_param did not collapse
        name = email.utils.collapse_rfc2231_value(name)
    if not name:
        return ""
    # Mailers put RFC 2047 words in quoted parameters, which RFC 2231 never allowed: decode.
    return decode_header_bytes(str(name).encode("utf-8", "surrogateescape"))[0]


def _payload_bytes(part: Message) -> bytes:
    """A leaf's body exactly as it arrived. compat32 stores it as ASCII text with 8-bit bytes as
    surrogates; its public get_payload() would decode those in the declared charset with
    replacement characters — the very loss this module exists to avoid — so the stored value is
    read directly."""
    payload: object = part.__dict__.get("_payload")
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return header_bytes(payload)
    return b""


def _part(
    part: Message, found: _Found, state: _Walk, depth: int, boundaries: tuple[bytes, ...]
) -> None:
    if state.stopped:
        return
    state.parts += 1
    if state.parts > MAX_PARTS:
        state.stopped = True
        return
    state.notes.extend(type(d).__name__ for d in part.defects)
    params = _params(part)
    filename = _filename(params)
    ctype, bad_type = _content_type(part, params, filename)
    where = filename or ctype
    if bad_type is not None:
        state.defects.append(bad_type)
    if part.is_multipart():
        children = [c for c in part.get_payload() if isinstance(c, Message)]
        if ctype in _ATTACHED_MESSAGE and children:
            eml = _eml(children[0], state)
            _attached_message(children[0], filename, eml, found, state, depth)
            return
        if ctype.startswith("message/"):
            # delivery-status, disposition-notification, external-body: header blocks the
            # stdlib reads as parts. Kept as one attachment of their own type: the part as sent,
            # its own headers included (an external-body's access type is in them).
            _attach(_eml(part, state), filename or ctype.split("/", 1)[1], ctype, state)
            return
        boundary = params.get_param("boundary")
        if isinstance(boundary, tuple):
            boundary = email.utils.collapse_rfc2231_value(boundary)
        inner = (
            (*boundaries, boundary.encode("utf-8", "surrogateescape")) if boundary else boundaries
        )
        for child in children:
            _part(child, found, state, depth, inner)
        return
    cte = raw_header(part, "content-transfer-encoding") or ""
    data, defects = transfer_decode(state.lifted.restore(_payload_bytes(part)), cte, where)
    state.defects.extend(defects)
    if ctype.startswith("multipart/"):
        _broken_multipart(data, part, found, state, depth, boundaries)
        return
    if ctype in _ATTACHED_MESSAGE and depth < MAX_DEPTH and data.strip():
        inner_msg = email.message_from_bytes(data, policy=email.policy.compat32)
        _attached_message(inner_msg, filename, data, found, state, depth)
        return
    disposition = (params.get("content-disposition") or "").split(";", 1)[0].strip().lower()
    if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
        text, text_defects = decode_text(
            _strip_boundaries(data, boundaries, state), _charset(params), ctype
        )
        state.defects.extend(text_defects)
        (found.plain if ctype == "text/plain" else found.html).append(text)
        return
    if not data and not filename:
        return  # nothing in it and no name: a gap in the structure, not an attachment
    if ctype in ("text/plain", "text/html") and disposition != "attachment":
        text, text_defects = decode_text(data, _charset(params), where)
        state.defects.extend(text_defects)
        found.named_inline.append(text if ctype == "text/plain" else html_to_text(text))
    _attach(data, filename or "attachment", ctype, state)


def _charset(params: Message) -> str | None:
    charset = params.get_param("charset")
    if isinstance(charset, tuple):
        charset = email.utils.collapse_rfc2231_value(charset)
    return str(charset) if charset else None


def _attach(data: bytes, filename: str, ctype: str, state: _Walk) -> None:
    keep = len(data) <= state.max_attachment
    name = safe_filename(filename)
    if not keep:
        state.defects.append(ParseDefect("attachment-not-kept", f"{name}: {len(data)} bytes"))
    state.attachments.append(
        Attachment(
            filename=name,
            content_type=ctype.replace("\x00", ""),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content=data if keep else None,
        )
    )


def _eml(msg: Message, state: _Walk) -> bytes:
    """An attached message's bytes as received, as near as compat32 can give them back: the
    generator neither refolds headers (maxheaderlen=0) nor mangles From lines; lifted bodies
    are put back."""
    out = io.BytesIO()
    try:
        BytesGenerator(out, mangle_from_=False, maxheaderlen=0).flatten(msg)
    except Exception as exc:  # a tree the generator cannot write back: keep what it wrote
        subject = " ".join((raw_header(msg, "subject") or "").split())[:60]
        state.defects.append(
            ParseDefect(
                "part-undecodable",
                f"attached message {subject or '(no subject)'} written back only in part: "
                f"{type(exc).__name__}",
            )
        )
    return state.lifted.restore_all(out.getvalue(), newline=b"\n")


def _attached_message(
    inner: Message, filename: str, data: bytes, found: _Found, state: _Walk, depth: int
) -> None:
    """message/rfc822 (issue 19 item 6): kept whole as an .eml attachment, and its text shown
    after a separator that says whose message it is. Its own attachments are kept too."""
    subject = raw_header(inner, "subject") or ""
    name = filename or (" ".join(subject.split())[:80] or "attached-message")
    if not name.lower().endswith(".eml"):
        name += ".eml"
    _attach(data, name, "message/rfc822", state)
    if depth >= MAX_DEPTH:
        return
    text = _message_text(inner, state, depth + 1)
    head = [f"---------- attached message: {safe_filename(name)} ----------"]
    for label in ("From", "Date", "Subject"):
        value = raw_header(inner, label)
        if value:
            head.append(f"{label}: {' '.join(value.split())}")
    found.attached_texts.append("\n".join(head) + "\n\n" + text)


def _broken_multipart(
    data: bytes,
    part: Message,
    found: _Found,
    state: _Walk,
    depth: int,
    boundaries: tuple[bytes, ...],
) -> None:
    """A multipart the stdlib found no parts in (its boundary missing or mistyped: issue 19
    item 7). The parts are recovered with the boundary the body really uses; failing that the
    body is read as text. Never a 0-byte "multipart/mixed" attachment."""
    if not data.strip():
        return
    m = _BOUNDARY_LINE.search(data)
    if m and depth < MAX_DEPTH:
        after = data[m.end() :].lstrip(b"\r\n")
        if _HEADER_LINE.match(after) or after.startswith((b"\r\n", b"\n")):
            boundary = m.group(1).rstrip(b"-") if data.rstrip().endswith(b"--") else m.group(1)
            header = b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\n\n'
            repaired = email.message_from_bytes(header + data, policy=email.policy.compat32)
            if repaired.is_multipart():
                state.defects.append(
                    ParseDefect(
                        "structure-repaired", f"boundary {boundary[:60].decode('ascii', 'replace')}"
                    )
                )
                for child in repaired.get_payload():
                    assert isinstance(child, Message)
                    _part(child, found, state, depth + 1, (*boundaries, boundary))
                return
    state.defects.append(ParseDefect("structure-repaired", "multipart without parts read as text"))
    text, defects = decode_text(
        _strip_boundaries(data, boundaries, state), _charset(_params(part)), "body"
    )
    state.defects.extend(defects)
    found.plain.append(text)


def _strip_boundaries(data: bytes, boundaries: tuple[bytes, ...], state: _Walk) -> bytes:
    """A text part without the boundary lines of the multiparts around it (a mistyped close
    delimiter leaks them into the text: issue 19 item 7)."""
    boundaries = tuple(b for b in boundaries if b"--" + b in data)
    if not boundaries:  # the common case: no regex to build
        return data
    pattern = re.compile(
        rb"^--(?:" + b"|".join(re.escape(b) for b in boundaries) + rb")-{0,2}[ \t]*\r?$\n?",
        re.M,
    )
    stripped, n = pattern.subn(b"", data)
    if n:
        state.defects.append(ParseDefect("boundary-in-text", f"{n} line(s)"))
    return stripped


def safe_filename(name: str) -> str:
    """A name safe to offer for download: no path, no control or shell-meaningful characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')
    return name.strip(" .")[:200] or "attachment"
