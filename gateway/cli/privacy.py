"""CLI commands for purge and erase (retention and privacy).

Registered on the main parser by `gateway.cli.main.build_parser`. Commands print plain words for an
admin; the rules they apply live in the modules they call (`gateway.privacy.retention`,
`gateway.privacy.erasure`), never here. Both are dry runs unless `--apply`; both record who ran
them.

Exit codes: 0 done (or a dry run), 1 a problem the output explains (erasure refused or not
verified, a config error), 2 usage (a number of days below 1, a contact that is neither an
address nor a phone number).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway import clock as business_clock
from gateway.config.errors import ConfigError
from gateway.config.loader import Settings, load_lenient


def register(sub: Any) -> None:
    """Add this module's commands to the main parser's subparsers `sub`."""
    s = sub.add_parser(
        "purge",
        help="remove bodies, attachments and raw mail of tickets closed past retention "
        "(dry run unless --apply)",
    )
    s.add_argument(
        "--older-than",
        type=int,
        metavar="DAYS",
        help="tickets resolved or closed more than DAYS days ago "
        "(default: [retention] closed_ticket_days in gateway.toml)",
    )
    s.add_argument("--apply", action="store_true", help="purge (without it: only say what)")
    s.add_argument("--reason", default="", help="recorded in the audit log")
    s.add_argument("--actor", default=os.environ.get("USER", "cli"), help="who (audit log)")
    s.set_defaults(func=cmd_purge)

    s = sub.add_parser(
        "erase",
        help="remove a person's personal data everywhere; billing keeps pseudonymous "
        "references and amounts (dry run unless --apply)",
    )
    s.add_argument(
        "--contact",
        action="append",
        required=True,
        metavar="ADDRESS|PHONE",
        help="email address or phone number; repeat for each identifier of the person",
    )
    s.add_argument("--apply", action="store_true", help="erase (without it: only say what)")
    s.add_argument(
        "--force",
        action="store_true",
        help="erase even while a config file (customers.toml) still names the contact",
    )
    s.add_argument("--reason", default="", help="recorded in the audit log (e.g. request id)")
    s.add_argument("--actor", default=os.environ.get("USER", "cli"), help="who (audit log)")
    s.set_defaults(func=cmd_erase)


def _settings(config: str) -> Settings:
    settings, problems = load_lenient(Path(config))
    for problem in problems:
        print(f"warning: config problem (run check-config): {problem}", file=sys.stderr)
    return settings


def _print_config_error(exc: ConfigError) -> None:
    print(f"config is invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_purge(args: argparse.Namespace) -> int:
    from gateway.intake.blobs import BlobStore
    from gateway.privacy.audit import Actor
    from gateway.privacy.retention import describe, purge
    from gateway.storage.db import make_engine, session_factory

    try:
        settings = _settings(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return 1
    retention = settings.gateway.retention
    days = args.older_than if args.older_than is not None else retention.closed_ticket_days
    if days < 1:
        print(
            f"--older-than {days}: must be at least 1 day (agents may still be reading "
            "tickets closed today)",
            file=sys.stderr,
        )
        return 2
    engine = make_engine(settings.database_url, immediate=args.apply)
    try:
        report = purge(
            session_factory(engine),
            BlobStore(settings.state_dir / "blobs", fsync=settings.gateway.spool.fsync),
            now=business_clock.now(),
            older_than_days=days,
            raw_message_days=retention.raw_message_days,
            apply=args.apply,
            actor=Actor(args.actor, "cli"),
            reason=args.reason,
        )
    finally:
        engine.dispose()
    describe(report, print)
    if not args.apply and report.changed:
        print("dry run: nothing changed; run again with --apply to purge")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from gateway.intake.blobs import BlobStore
    from gateway.privacy.audit import Actor
    from gateway.privacy.erasure import describe, erase
    from gateway.privacy.identity import ErasureError, parse_contact
    from gateway.storage.db import make_engine, session_factory

    kinds: set[str] = set()
    for contact in args.contact:
        try:
            kinds.add(parse_contact(contact)[0])
        except ErasureError as exc:
            print(f"--contact: {exc}", file=sys.stderr)
            return 2
    try:
        settings = _settings(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return 1
    outside: list[str] = []
    if "email" in kinds and settings.gateway.imap:
        names = ", ".join(box.name for box in settings.gateway.imap)
        outside.append(
            f"the IMAP mailbox(es) {names} keep their own copy of the mail on the mail server: "
            "delete it there"
        )
    if settings.forwarding.webhook:
        names = ", ".join(hook.name for hook in settings.forwarding.webhook)
        outside.append(
            f"help desks tickets are forwarded to ({names}) keep what they received (tickets "
            "changed here are sent again as updates): erase the person there too"
        )
    if "phone" in kinds:
        outside.append(
            "Twilio keeps its own log of texts, calls and recordings: delete them in Twilio's "
            "console or API"
        )
    config_contacts = [
        (c.name, c.email, c.phone) for a in settings.customers.account for c in a.contacts
    ]
    engine = make_engine(settings.database_url, immediate=args.apply)
    try:
        report = erase(
            session_factory(engine),
            BlobStore(settings.state_dir / "blobs", fsync=settings.gateway.spool.fsync),
            contacts=args.contact,
            state_dir=settings.state_dir,
            spool_dir=settings.spool_dir,
            config_dir=settings.directory,
            config_contacts=config_contacts,
            now=business_clock.now(),
            actor=Actor(args.actor, "cli"),
            apply=args.apply,
            force=args.force,
            reason=args.reason,
            outside_copies=outside,
        )
    except ErasureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    describe(report, print)
    if not args.apply:
        return 0
    return 0 if report.complete else 1


__all__ = ["register"]
