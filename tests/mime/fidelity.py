"""What the fidelity suite compares: a fixture's parse as a small JSON-able record.

`python -m tests.mime.fidelity` writes a *draft* expected file for each fixture that has none;
a draft is reviewed by hand against the raw file (every U+FFFD, empty body and 0-byte part
looked at, a `review` note saying what was checked) before it is committed. Existing files are
never overwritten: they are the reviewed truth the parser is held to."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.intake.rawmail import looks_like_message
from gateway.intake.spool import Envelope
from gateway.stages.parse import parse

CORPORA = ("python-email", "flanker", "spamscope")
EXPECTED = Path(__file__).parent / "expected"
MAX_ATTACHMENT = 30 * 1024 * 1024  # the sample config's limits.max_attachment_bytes
ENVELOPE = Envelope(
    channel="pipe",
    received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
    mail_from=None,
    recipients=("support@example.com",),
)


def fixtures(mail: Path) -> list[Path]:
    return sorted(p for c in CORPORA for p in (mail / c).rglob("*") if p.is_file())


def expected_path(mail: Path, fixture: Path) -> Path:
    return EXPECTED / (str(fixture.relative_to(mail)) + ".json")


def observe(raw: bytes) -> dict[str, Any]:
    """What the fidelity suite holds the parser to: refused or not, the decoded subject,
    whether the body has text, and each attachment's name, type and size."""
    if not looks_like_message(raw):
        return {"refused": True}
    message = parse(raw, ENVELOPE, "fidelity", MAX_ATTACHMENT)
    return {
        "refused": False,
        "subject": message.subject,
        "body_has_text": bool(message.text.strip()),
        "attachments": [[a.filename, a.content_type, a.size] for a in message.attachments],
    }


def write_drafts(mail: Path) -> int:
    written = 0
    for fixture in fixtures(mail):
        target = expected_path(mail, fixture)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        record = {**observe(fixture.read_bytes()), "review": "DRAFT: not reviewed yet"}
        target.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
        written += 1
    return written


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data/mail")
    print(f"{write_drafts(root)} drafts written under {EXPECTED}")
