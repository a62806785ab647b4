"""`gateway spool list|show|replay` and `gateway quarantine list|replay`: what waits in the spool
and what was set aside. Thin: the spool (gateway/intake/spool.py) owns every move.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.cli.common import (
    load_settings,
    open_spool,
)


def cmd_spool(args: argparse.Namespace) -> int:
    with open_spool(load_settings(args)) as spool:
        if args.spool_cmd == "list":
            pending = list(spool.pending())
            if not pending:
                print("spool is empty")
            for e in pending:
                print(
                    f"{e.id}  {e.envelope.channel:12} attempts={e.attempts} {e.size:>9}B "
                    f"from={e.envelope.mail_from or '-'}"
                )
            return 0
        if args.spool_cmd == "show":
            entry = spool.get(args.id)
            if entry is None:
                record = spool.quarantine_record(args.id)
                if record is None:
                    print(f"no spool entry {args.id}", file=sys.stderr)
                    return 1
                print(
                    json.dumps(
                        {
                            "id": record.id,
                            "quarantined": True,
                            "stage": record.stage,
                            "error": record.error,
                            "attempts": record.attempts,
                            "envelope": record.envelope.to_json(),
                        },
                        indent=2,
                        default=str,
                    )
                )
                return 0
            print(
                json.dumps(
                    {
                        "id": entry.id,
                        "attempts": entry.attempts,
                        "size": entry.size,
                        "envelope": entry.envelope.to_json(),
                    },
                    indent=2,
                    default=str,
                )
            )
            head = spool.read_raw(entry)[:2000].decode("utf-8", "replace")
            print(head)
            return 0
        return _replay(spool, args.id)


def _replay(spool: Any, entry_id: str) -> int:
    ids = [r.id for r in spool.quarantined()] if entry_id == "all" else [entry_id]
    missing = [i for i in ids if not spool.replay(i)]
    for i in ids:
        if i not in missing:
            print(f"replayed {i}")
    for i in missing:
        print(f"no quarantined entry {i}", file=sys.stderr)
    return 1 if missing else 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    with open_spool(load_settings(args)) as spool:
        if args.q_cmd == "list":
            records = list(spool.quarantined())
            if not records:
                print("quarantine is empty")
            for r in records:
                print(
                    f"{r.id}  {r.envelope.channel:12} attempts={r.attempts} stage={r.stage} "
                    f"error={r.error[:120]}"
                )
            return 0
        return _replay(spool, args.id)
