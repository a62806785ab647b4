"""`gateway ingest`: the MTA's pipe transport (Postfix `pipe`, Exim), one process per message.

Owns the command's arguments and how it reads its input; the exit-code contract and the
"is this a message" check are `channels.pipe`'s. An MTA starts this once per message, so its
start-up is the channel's throughput (issue 20 outcome 3): it reads gateway.toml alone
(`gateway.config.gateway_file`) and imports the spool and nothing else — no classifier, no
SQLAlchemy, no policy build. `tests/test_ingest.py` keeps that list honest. Never parses beyond
`channels.pipe`, never touches the database.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import print_config_error
from gateway.config.errors import ConfigError

# Files spooled together (`gateway ingest FILE...`): one group's fsyncs shared, at most this
# many files or bytes of them in memory at once.
GROUP_FILES = 64
GROUP_BYTES = 32 << 20


def register(sub: Any) -> None:
    """Add `ingest` to the main parser's subparsers `sub` (the full parser and the light one)."""
    s = sub.add_parser("ingest", help="spool a message from stdin (MTA pipe transport) or files")
    s.add_argument("--recipient")
    s.add_argument("--sender")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("files", nargs="*")
    s.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from channels.pipe import (
        EX_NOINPUT,
        EX_TEMPFAIL,
        IngestResult,
        batch_exit_code,
        ingest,
        ingest_many,
    )
    from gateway.config.gateway_file import load_gateway_file, spool_dir
    from gateway.intake.spool import Spool, SpoolError

    directory = Path(args.config).absolute()
    try:
        g = load_gateway_file(directory)
    except ConfigError as exc:
        print_config_error(exc)
        return EX_TEMPFAIL  # the MTA keeps the mail while the admin fixes the config
    try:
        spool = Spool(
            spool_dir(directory, g),
            fsync=g.spool.fsync,
            high_water_bytes=g.spool.high_water_mib * 1024 * 1024,
            min_free_bytes=g.spool.min_free_mib * 1024 * 1024,
        )
    except (SpoolError, OSError) as exc:
        # Our fault, never the sender's: the MTA must keep the mail and retry.
        print(f"spool unavailable, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    results: list[IngestResult] = []

    def report(done: list[IngestResult]) -> None:
        for result in done:
            if result.code != 0 or not args.quiet:
                print(result.detail, file=sys.stderr if result.code else sys.stdout)
        results.extend(done)

    try:
        if not args.files:  # an MTA's delivery: one message on stdin
            raw = sys.stdin.buffer.read(g.limits.max_message_bytes + 1)
            report([ingest(spool, raw, recipient=args.recipient, sender=args.sender,
                           max_bytes=g.limits.max_message_bytes)])
            return batch_exit_code(results)
        # Files (an admin importing saved mail): spooled in groups that share their fsyncs,
        # each file read when its group's turn comes, so one unreadable file is that file's
        # refusal and memory holds one group, never all of them.
        group: list[tuple[str, bytes]] = []
        group_bytes = 0

        def flush() -> None:
            nonlocal group, group_bytes
            if group:
                report(ingest_many(spool, group, recipient=args.recipient, sender=args.sender,
                                   max_bytes=g.limits.max_message_bytes))
            group, group_bytes = [], 0

        for source in args.files:
            try:
                raw = Path(source).read_bytes()
            except OSError as exc:
                flush()  # answers stay in the files' order
                report([IngestResult(EX_NOINPUT, f"{source}: cannot read: {exc.strerror}")])
                continue
            group.append((source, raw))
            group_bytes += len(raw)
            if len(group) >= GROUP_FILES or group_bytes >= GROUP_BYTES:
                flush()
        flush()
    finally:
        spool.close()
    return batch_exit_code(results)
