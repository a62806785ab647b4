"""Raw mail as a channel receives it, before any parsing: the two checks on bare bytes.

Owns `strip_mbox_line` (a leading mbox `From ` envelope line and blank lines are not part of the
message) and `looks_like_message` (do the bytes start like RFC 5322 headers: `gateway ingest`
and the pipe channel refuse anything else with 65). Pure functions of bytes, shared by the
parse stage, sender authentication and the channels, so none of them imports another for it.
"""

from __future__ import annotations

import re

_HEADER_NAME = re.compile(rb"^[!-9;-~]+:")


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


def looks_like_message(raw: bytes) -> bool:
    """Whether bytes start like RFC 5322 headers. Used by `ingest` to refuse non-messages (65)."""
    body = strip_mbox_line(raw)
    if not body or b"\x00" in body[:4096]:
        return False
    first = body.split(b"\n", 1)[0]
    if not _HEADER_NAME.match(first):
        return False
    head = body[:65536].lower()
    return any(
        h in head
        for h in (
            b"\nfrom:",
            b"\nmessage-id:",
            b"\nsubject:",
            b"\ndate:",
            b"\nto:",
            b"\nreceived:",
            b"\nmime-version:",
            b"\ncontent-type:",
        )
    ) or first.lower().startswith(
        (
            b"from:",
            b"received:",
            b"return-path:",
            b"message-id:",
            b"mime-version:",
            b"content-type:",
        )
    )
