"""Raw mail as a channel receives it, before any parsing: the two checks on bare bytes.

Owns `strip_mbox_line` (a leading mbox `From ` envelope line and blank lines are not part of the
message), `looks_like_message` (do the bytes hold a header block at all: `gateway ingest` and
the pipe channel refuse anything else with 65) and `repair_header_start` (skip a damaged first
line before the real headers). Pure functions of bytes, shared by the
parse stage, sender authentication and the channels, so none of them imports another for it.
"""

from __future__ import annotations

import re

_HEADER_NAME = re.compile(rb"^[!-9;-~]+:")
_BLANK_LINE = re.compile(rb"\n\r?\n")
# Headers only a message has: one of them in the header block tells a message from a text file
# that happens to hold a colon.
_KNOWN_HEADER = re.compile(
    rb"^(from|message-id|subject|date|to|cc|received|mime-version|content-type|return-path"
    rb"|delivered-to|reply-to|sender|x-[!-9;-~]*)[ \t]*:",
    re.M,
)


def strip_mbox_line(raw: bytes) -> bytes:
    """Drop a leading mbox `From ` envelope line, as mail saved from a mailbox often has, and
    leading blank or whitespace-only lines (some clients save messages that way)."""
    if raw.startswith(b"From "):
        nl = raw.find(b"\n")
        raw = raw[nl + 1 :] if nl >= 0 else b""
    while raw[:1] in (b" ", b"\t", b"\r", b"\n"):
        nl = raw.find(b"\n")
        if nl < 0 or raw[:nl].strip():
            break
        raw = raw[nl + 1 :]
    return raw


def _head(body: bytes) -> bytes:
    """The header block: up to the first empty line (or the first 64 KiB)."""
    m = _BLANK_LINE.search(body, 0, 65536)
    return body[: m.start() + 1] if m else body[:65536]


def header_start(body: bytes) -> int | None:
    """Where the headers really start in mbox-stripped bytes: 0 for a sound message, the offset
    of the first header line after a damaged first line (garbled, or one leading space: issue 19
    item 9), None when the header block holds no header line of a message at all."""
    head = _head(body)
    if b"\x00" in head:  # binary (an Outlook .msg); NUL in the *body* is UTF-16 text, not this
        return None
    offset = 0
    for line in head.splitlines(keepends=True):
        bare = line.lstrip(b" \t")
        if _KNOWN_HEADER.match(bare.lower()) or (offset == 0 and _HEADER_NAME.match(line)):
            start = offset + len(line) - len(bare)
            return start if _KNOWN_HEADER.search(b"\n" + head[start:].lower()) else None
        offset += len(line)
    return None


def repair_header_start(body: bytes) -> tuple[bytes, bytes]:
    """The bytes from the first real header line on, and what was cut before it (empty for a
    sound message). The parse stage records a cut as a defect; the raw message stays whole."""
    start = header_start(body)
    if not start:
        return body, b""
    return body[start:], body[:start]


def looks_like_message(raw: bytes) -> bool:
    """Whether bytes hold a header block of a message. Used by `ingest` and the pipe channel to
    refuse non-messages (65): only what has no header block at all is refused (issue 19)."""
    return header_start(strip_mbox_line(raw)) is not None
