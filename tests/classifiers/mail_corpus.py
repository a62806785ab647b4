"""Turn raw RFC 5322 files (SpamAssassin corpus, mbox `From ` line first) into TextInput values.

Test and bench helper only: in the daemon, parsing belongs to the gateway's parse stage.
"""

from __future__ import annotations

import email
import html
import re
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

from classifiers.types import TextInput

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = (ROOT / "../shared/data").resolve()
SPAMASSASSIN = SHARED_DATA / "mail" / "spamassassin"
_TAGS = re.compile(r"(?is)<(script|style)\b.*?</\1\s*>|<[^>]+>")


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:  # undecodable header: the corpus has plenty
        return ""


def _body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except Exception:  # unknown charset, broken transfer encoding
        payload = part.get_payload(decode=True)
        content = payload.decode("latin-1", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return ""
    if part.get_content_type() == "text/html":
        content = html.unescape(_TAGS.sub(" ", content))
    return content


def parse_raw(raw: bytes, channel: str = "email") -> TextInput:
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    headers = tuple((k.lower(), _text(v)) for k, v in msg.raw_items())
    return TextInput(
        subject=_text(msg.get("subject", "") or ""),
        body=_body(msg),
        headers=headers,
        sender=_text(msg.get("from", "") or ""),
        channel=channel,
    )


def corpus(*folders: str) -> Iterator[tuple[Path, TextInput]]:
    for folder in folders:
        for path in sorted((SPAMASSASSIN / folder).iterdir()):
            if path.is_file():
                yield path, parse_raw(path.read_bytes())
