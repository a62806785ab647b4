"""CLI commands for billing (bundles, ledger, export).

Registered on the main parser by `gateway.cli.main.build_parser`. Commands print plain words for an
admin; the rules they apply live in `gateway/emergency/ledger.py` and `gateway/emergency/holds.py`,
never here. Every change (a bundle, a credit) is audited as `cli:<user>` in its transaction.

    gateway billing bundle add ACCOUNT UNITS [--note TEXT]
    gateway billing show ACCOUNT [--json]
    gateway billing export --from DATE --to DATE [--format csv|json] [--output FILE]
    gateway billing credit REF --kind duplicate|merged|our-fault --reason TEXT
    gateway billing release-holds [--at ISO-TIME]

Dates are UTC days (2026-11-01) or ISO times with a zone; `--to` is exclusive, so a month is
`--from 2026-11-01 --to 2026-12-01`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from gateway import clock as business_clock
from gateway.config.loader import Settings, load_lenient


def register(sub: Any) -> None:
    """Add this module's commands to the main parser's subparsers `sub`."""
    billing = sub.add_parser("billing", help="emergency billing: bundles, ledger, export")
    cmds = billing.add_subparsers(dest="billing_cmd", required=True)

    bundle = cmds.add_parser("bundle", help="prepaid incident bundles").add_subparsers(
        dest="bundle_cmd", required=True
    )
    s = bundle.add_parser("add", help="add a prepaid bundle of incidents to an account")
    s.add_argument("account")
    s.add_argument("units", type=int)
    s.add_argument("--note", default="", help="e.g. the invoice or order number")
    s.add_argument("--actor", default=os.environ.get("USER", "cli"))
    s.set_defaults(func=cmd_bundle_add)

    s = cmds.add_parser("show", help="an account's bundle balance, incidents, charges, credits")
    s.add_argument("account")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    s = cmds.add_parser("export", help="one line per incident opened in [--from, --to)")
    s.add_argument("--from", dest="since", required=True, help="2026-11-01 (UTC) or ISO time")
    s.add_argument("--to", dest="until", required=True, help="exclusive, e.g. 2026-12-01")
    s.add_argument("--format", choices=("csv", "json"), default="csv")
    s.add_argument("--output", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_export)

    s = cmds.add_parser("credit", help="credit an incident: duplicate, merged or our fault")
    s.add_argument("ref", help="the ticket of the incident, e.g. T-000123")
    s.add_argument("--kind", required=True, choices=("duplicate", "merged", "our-fault"))
    s.add_argument("--reason", required=True)
    s.add_argument("--actor", default=os.environ.get("USER", "cli"))
    s.set_defaults(func=cmd_credit)

    s = cmds.add_parser(
        "release-holds",
        help="expire emergency requests nobody confirmed in time (the daemon does it too)",
    )
    s.add_argument("--at", help="as if it were this ISO time (with a zone) instead of now")
    s.set_defaults(func=cmd_release_holds)


def _settings(args: argparse.Namespace) -> Settings:
    settings, problems = load_lenient(Path(args.config))
    for problem in problems:
        print(f"warning: config problem (run check-config): {problem}", file=sys.stderr)
    return settings


def _session(settings: Settings, *, write: bool = False) -> Any:
    from gateway.storage.db import open_session

    return open_session(settings.database_url, write=write)


def _actor(args: argparse.Namespace) -> Any:
    from gateway.privacy.audit import Actor

    return Actor(args.actor, "cli")


def parse_when(text: str, *, option: str) -> datetime:
    """A UTC day ("2026-11-01", midnight UTC) or an ISO time with a zone."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{option} {text!r}: not a date (2026-11-01) or ISO time ({exc})") from exc
    if when.tzinfo is None:
        raise ValueError(f"{option} {text!r} needs a zone, e.g. 2026-11-01T00:00:00Z")
    return when


def _known_accounts(settings: Settings, session: Session) -> set[str]:
    from sqlalchemy import select

    from gateway.storage.models import CustomerAccount

    known = {a.id for a in settings.customers.account}
    known.update(session.execute(select(CustomerAccount.account_id)).scalars())
    return known


def cmd_bundle_add(args: argparse.Namespace) -> int:
    from gateway.emergency.ledger import add_bundle, bundle_balance

    settings = _settings(args)
    with _session(settings, write=True) as session:
        error = add_bundle(
            session,
            args.account,
            args.units,
            actor=_actor(args),
            at=business_clock.now(),
            note=args.note,
            known_accounts=_known_accounts(settings, session),
        )
        if error is not None:
            session.rollback()
            print(f"error: {error}", file=sys.stderr)
            return 1
        left = bundle_balance(session, args.account)
    print(f"{args.account}: added {args.units} prepaid incidents; {left} left")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gateway.emergency.billing_views import account_billing

    settings = _settings(args)
    with _session(settings) as session:
        data = account_billing(session, args.account)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    b = data["bundle"]
    print(f"account {data['account']}")
    print(
        f"prepaid bundle: {b['purchased']} bought, {b['returned']} given back by credits, "
        f"{b['used']} used, {b['remaining']} left"
    )
    if not data["incidents"]:
        print("no incidents")
    for i in data["incidents"]:
        paid = f"bundle unit ({i['bundle_unit']})" if i["bundle_unit"] else "charged"
        hours = "after hours" if i["after_hours"] else "in hours"
        print(
            f"  {i['incident']}  {i['ticket']}  {i['opened_at']}  {i['channel']:5}  {hours:11}  "
            f"{paid}: charged {i['charged']} credited {i['credited']} net {i['net']} "
            f"{i['currency']}"
        )
    for currency, t in data["totals"].items():
        print(f"total {currency}: charged {t['charged']}, credited {t['credited']}, net {t['net']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.emergency.billing_views import export_incidents

    try:
        since = parse_when(args.since, option="--from")
        until = parse_when(args.until, option="--to")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if until <= since:
        print("error: --to must be after --from", file=sys.stderr)
        return 2
    settings = _settings(args)
    with _session(settings) as session:
        export = export_incidents(session, since, until)
    text = export.to_csv() if args.format == "csv" else export.to_json() + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{len(export.lines)} incidents written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_credit(args: argparse.Namespace) -> int:
    from gateway.emergency.ledger import credit_incident
    from gateway.storage.queries import find_ticket

    settings = _settings(args)
    with _session(settings, write=True) as session:
        ticket = find_ticket(session, args.ref)
        if ticket is None:
            print(f"error: no ticket {args.ref}", file=sys.stderr)
            return 1
        error = credit_incident(
            session,
            ticket.id,
            args.kind,
            actor=_actor(args),
            at=business_clock.now(),
            reason=args.reason,
        )
        if error is not None:
            session.rollback()
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(f"{args.ref}: incident credited ({args.kind})")
    return 0


def cmd_release_holds(args: argparse.Namespace) -> int:
    from gateway.emergency.holds import release_expired
    from gateway.policy.calendars import build_calendars
    from gateway.storage.db import make_engine, session_factory

    now = business_clock.now()
    if args.at:
        try:
            now = parse_when(args.at, option="--at")
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    settings = _settings(args)
    engine = make_engine(settings.database_url, immediate=True)
    try:
        released = release_expired(
            session_factory(engine),
            settings,
            build_calendars(settings.calendars),
            now,
            settings.gateway.outbound.from_name.removesuffix(" Support") or "Support",
        )
    finally:
        engine.dispose()
    for reference in released:
        print(
            f"{reference}: emergency request expired, no confirmation in time; not billed, "
            "the ticket keeps its place"
        )
    if not released:
        print(f"no emergency request is past its deadline at {now.isoformat()}")
    return 0
