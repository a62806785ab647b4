"""MIME fidelity over the SpamAssassin corpus (6,046 real mails; issue 19): how many mails have
a non-empty body, how many attachments were kept (and how many of them are 0 bytes), how many
subjects hold U+FFFD, how many were refused, parse defects by kind, and the parse time. Print
only, no asserts.

Usage: .venv/bin/python bench/mime_fidelity.py [--tree DIR]
  --tree DIR  parse with the gateway package of another checkout (e.g. a worktree of the commit
              before issue 19) to print the "before" figures with the same code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "mail" / "spamassassin"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from gateway.intake.rawmail import looks_like_message
    from gateway.intake.spool import Envelope
    from gateway.stages.parse import parse

    envelope = Envelope(
        channel="pipe",
        received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
        mail_from=None,
        recipients=("support@example.com",),
    )
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    counts: Counter[str] = Counter()
    defects: Counter[str] = Counter()
    seconds = 0.0
    for path in files:
        raw = path.read_bytes()
        if not looks_like_message(raw):
            counts["refused"] += 1
            continue
        started = time.perf_counter()
        message = parse(raw, envelope, path.name, 30 * 1024 * 1024)
        seconds += time.perf_counter() - started
        counts["parsed"] += 1
        counts["non-empty body"] += bool(message.text.strip())
        counts["attachments kept"] += sum(a.content is not None for a in message.attachments)
        counts["0-byte attachments"] += sum(a.size == 0 for a in message.attachments)
        counts["multipart/* attachments"] += sum(
            a.content_type.startswith("multipart/") for a in message.attachments
        )
        counts["subjects with U+FFFD"] += "\ufffd" in message.subject
        counts["bodies with U+FFFD"] += "\ufffd" in message.text
        for d in getattr(message, "parse_defects", ()):
            defects[d.kind] += 1
    print(f"gateway package: {args.tree.resolve()}")
    print(f"files: {len(files)}")
    for name in (
        "refused",
        "parsed",
        "non-empty body",
        "attachments kept",
        "0-byte attachments",
        "multipart/* attachments",
        "subjects with U+FFFD",
        "bodies with U+FFFD",
    ):
        print(f"{name:>24}: {counts[name]}")
    per_mail = 1000 * seconds / max(1, counts["parsed"])
    print(f"{'parse time':>24}: {seconds:.1f} s, {per_mail:.2f} ms a mail")
    for kind, n in sorted(defects.items()):
        print(f"{'defect ' + kind:>40}: {n}")


if __name__ == "__main__":
    main()
