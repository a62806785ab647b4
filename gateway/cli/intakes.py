"""`gateway intakes`: every message the gateway took in and what became of it, newest first.

A rejected call or text (a plan without that channel) opens no ticket: its `intakes` row is all
there is, and this command is how an operator sees it (issue 18 item 6). Thin: reads go through
gateway/storage/queries.py; never changes anything and never creates the database.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.cli.common import (
    DEFAULT_PAGE,
    load_settings,
    missing_database,
    open_db_session,
    print_page_note,
)

COLUMNS = ("RECEIVED", "OUTCOME", "CHANNEL", "FROM", "REASON")


def cmd_intakes(args: argparse.Namespace) -> int:
    from gateway.storage.queries import INTAKE_OUTCOMES, list_intakes

    if args.outcome is not None and args.outcome not in INTAKE_OUTCOMES:
        print(
            f"gateway intakes: --outcome {args.outcome!r} is not one of "
            f"{', '.join(INTAKE_OUTCOMES)}",
            file=sys.stderr,
        )
        return 2
    settings = load_settings(args)
    missing = missing_database(settings)
    if missing is not None:
        print(f"no intakes yet: no database at {missing}", file=sys.stderr)
        print("[]" if args.json else "no intakes")
        return 0
    limit = args.limit if args.limit is not None else (None if args.all else DEFAULT_PAGE)
    with open_db_session(settings) as session:
        rows, total = list_intakes(session, outcome=args.outcome, limit=limit, offset=args.offset)
        records = [_record(r) for r in rows]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        _print_table(records, args.outcome)
    print_page_note("intakes", args.offset, len(rows), total, limit or DEFAULT_PAGE)
    return 0


def _record(intake: Any) -> dict[str, Any]:
    received = intake.received_at
    return {
        "received_at": received.isoformat().replace("+00:00", "Z") if received else None,
        "outcome": intake.outcome,
        "channel": intake.channel,
        "from": intake.sender,
        "reason": intake.reason,
        "dedup_key": intake.dedup_key,
    }


def _print_table(records: list[dict[str, Any]], outcome: str | None) -> None:
    """A header row and columns as wide as their widest value; the reason last, whole."""
    if not records:
        print(f"no {outcome} intakes" if outcome else "no intakes")
        return
    rows = [
        (r["received_at"] or "-", r["outcome"], r["channel"], r["from"] or "-", r["reason"] or "-")
        for r in records
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS) - 1)]
    for row in [COLUMNS, *rows]:
        cells = [value.ljust(width) for value, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, " ".join(row[-1].split())]))


def register(sub: Any) -> None:
    """`gateway intakes [--outcome OUTCOME] [--json] [--all] [--limit N] [--offset N]`."""
    s = sub.add_parser(
        "intakes",
        help="every message taken in and what became of it, newest first (e.g. --outcome reject: "
        "rejected calls and texts, which open no ticket)",
    )
    s.add_argument(
        "--outcome",
        help="only these: ticket, follow-up, duplicate, discard, reject or hold",
    )
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="every one, no page limit")
    s.add_argument(
        "--limit", type=int, help=f"at most this many (default {DEFAULT_PAGE}; none with --all)"
    )
    s.add_argument("--offset", type=int, default=0, help="skip this many (the next page)")
    s.set_defaults(func=cmd_intakes)
