"""`gateway tickets`, `show` and `ticket set-status|set-severity`: the agents' view of tickets
from a terminal. Thin: reads and changes go through gateway/storage and gateway/ticket_json.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway import clock
from gateway.cli.common import (
    DEFAULT_PAGE,
    STATUSES,
    load_settings,
    missing_database,
    open_db_session,
    print_page_note,
)

TICKET_COLUMNS = ("REF", "FLAGS", "SEVERITY", "STATUS", "ACCOUNT", "CHANNEL", "SUBJECT")


def cmd_tickets(args: argparse.Namespace) -> int:
    from gateway.storage.queries import OPEN_STATUSES, count_queue, list_queue
    from gateway.ticket_json import ticket_json

    settings = load_settings(args)
    missing = missing_database(settings)
    if missing is not None:
        print(f"no tickets yet: no database at {missing}", file=sys.stderr)
        print("[]" if args.json else "no tickets")
        return 0
    statuses = tuple(STATUSES) if args.all else OPEN_STATUSES
    # --all means every ticket; otherwise one page of DEFAULT_PAGE unless --limit says more.
    # A cut list always says so and how to page (issue 17 item 11: --all used to stop at 100).
    limit = args.limit if args.limit is not None else (None if args.all else DEFAULT_PAGE)
    with open_db_session(settings) as session:
        tickets = list_queue(session, statuses=statuses, limit=limit, offset=args.offset)
        total = count_queue(session, statuses=statuses)
        if args.json:
            print(json.dumps([ticket_json(session, t) for t in tickets], indent=2))
        else:
            _print_ticket_table(tickets)
    print_page_note("tickets", args.offset, len(tickets), total, limit or DEFAULT_PAGE)
    return 0


def ticket_flags(ticket: Any) -> str:
    """H held, J jumps the queue, E emergency (e: its billing not yet acknowledged; P: an
    emergency request awaits the contact's confirmation)."""
    emergency = ("E" if ticket.emergency_acknowledged else "e") if ticket.emergency else "-"
    if emergency == "-" and ticket.emergency_pending:
        emergency = "P"
    return ("H" if ticket.held else "-") + ("J" if ticket.jump_queue else "-") + emergency


def _print_ticket_table(tickets: list[Any]) -> None:
    """A header row and columns as wide as their widest value (`twilio-voice` included)."""
    if not tickets:
        print("no tickets")
        return
    rows = [
        (
            t.reference or "-",
            ticket_flags(t),
            t.severity,
            t.status,
            t.account_id[:24],
            t.channel,
            t.subject[:60],
        )
        for t in tickets
    ]
    widths = [max(len(r[i]) for r in [TICKET_COLUMNS, *rows]) for i in range(len(TICKET_COLUMNS))]
    for row in [TICKET_COLUMNS, *rows]:
        cells = [v.ljust(w) for v, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def cmd_show(args: argparse.Namespace) -> int:
    from gateway.storage.queries import find_ticket
    from gateway.ticket_json import ticket_json

    settings = load_settings(args)
    missing = missing_database(settings)
    if missing is not None:
        print(f"no ticket {args.ref}: no database at {missing}", file=sys.stderr)
        return 1
    with open_db_session(settings) as session:
        ticket = find_ticket(session, args.ref)
        if ticket is None:
            print(f"no ticket {args.ref}", file=sys.stderr)
            return 1
        data = ticket_json(session, ticket, detail=True)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(
        f"{data['reference']}  {data['status']}  severity={data['severity']}  "
        f"jump_queue={'yes' if data['jump_queue'] else 'no'}  queue={data['queue']}"
    )
    print(
        f"account={data['account']} plan={data['plan']} contact={data['contact']} "
        f"channel={data['channel']}"
    )
    print(f"subject: {data['subject']}")
    print(
        f"created {data['created_at']}  updated {data['updated_at']}  "
        f"messages={data['message_count']}"
    )
    classifier = data["explanation"].get("classifier", {})
    if classifier:
        print(f"classifier: {classifier.get('explanation')}")
    if data["held"]:
        print(f"HELD: {data['hold_reason']}")
    if data["emergency_pending"]:
        print(
            "EMERGENCY PENDING: awaiting the contact's confirmation of the charge; the ticket "
            f"keeps its place, first response due {data['first_response_due'] or 'none'}"
        )
    if data["tags"]:
        print(f"tags: {', '.join(data['tags'])}")
    if data["emergency_review"]:
        print("REVIEW: an accepted emergency the classifier rated far lower; an agent should look")
    billing = data.get("billing") or {}
    if billing.get("explanation"):
        print("emergency and billing:")  # every hold, rejection and charge, in plain words
        for line in billing["explanation"]:
            print(f"  {line}")
    print("decisions:")
    for d in data["decisions"]:
        print(f"  {d['stage']:10} {d['code']:14} {d['text']}")
    for o in data["outbox"]:
        print(f"outbox: {o['kind']} to {o['to']}: {o['status']} {o['reason']}")
    for m in data["messages"]:
        print(f"--- {m['direction']} {m['received_at']} from {m['from']} ({m['channel']})")
        for a in m["attachments"]:
            print(f"    attachment {a['filename']} {a['content_type']} {a['size']} bytes")
        for d in m.get("parse_defects", []):  # lost or altered in parsing: the raw has it all
            detail = f" ({d['detail']})" if d["detail"] else ""
            print(f"    PARSE DEFECT {d['kind']}{detail}: {d['meaning']}")
        print(m["text"][:1500])
    return 0


def cmd_ticket_set_status(args: argparse.Namespace) -> int:
    from gateway.storage.admin import set_status

    settings = load_settings(args)
    with open_db_session(settings, write=True) as session:
        error = set_status(
            session,
            args.ref,
            args.status,
            actor=args.actor,
            reason=args.reason,
            resolution=args.resolution,  # audited with the change (gateway/storage/admin.py)
        )
    if error:
        print(error, file=sys.stderr)
        return 1
    print(f"{args.ref}: status {args.status}")
    return 0


def cmd_ticket_set_severity(args: argparse.Namespace) -> int:
    from gateway.storage.admin import set_severity

    settings = load_settings(args)
    with open_db_session(settings, write=True) as session:
        error = set_severity(
            session,
            args.ref,
            args.level,
            settings.severity.levels,
            actor=args.actor,
            reason=args.reason,
        )
    if error:
        print(error, file=sys.stderr)
        return 1
    print(f"{args.ref}: severity {args.level} (recorded as a classifier label)")
    return 0


def cmd_ticket_link_incident(args: argparse.Namespace) -> int:
    """`gateway ticket link-incident REF EMERGENCY --reason`: part of that incident, audited."""
    from gateway.emergency.links import link_to_incident
    from gateway.privacy.audit import Actor
    from gateway.storage.admin import AdminError
    from gateway.storage.queries import find_ticket

    settings = load_settings(args)
    with open_db_session(settings, write=True) as session:
        ticket, emergency = find_ticket(session, args.ref), find_ticket(session, args.emergency)
        if ticket is None or emergency is None:
            print(f"no ticket {args.ref if ticket is None else args.emergency}", file=sys.stderr)
            return 1
        try:
            changed = link_to_incident(
                session,
                ticket,
                emergency,
                actor=Actor(args.actor, "cli"),
                at=clock.now(),
                reason=args.reason,
            )
        except AdminError as exc:
            print(exc, file=sys.stderr)
            return 1
        said = f"{ticket.reference}: part of the incident of {emergency.reference}"
    print(said + ("" if changed else " (already)"))
    return 0


def cmd_ticket_unlink_incident(args: argparse.Namespace) -> int:
    """`gateway ticket unlink-incident REF --reason`: out of the incident it was linked to."""
    from gateway.emergency.links import unlink_from_incident
    from gateway.privacy.audit import Actor
    from gateway.storage.admin import AdminError
    from gateway.storage.queries import find_ticket

    settings = load_settings(args)
    with open_db_session(settings, write=True) as session:
        ticket = find_ticket(session, args.ref)
        if ticket is None:
            print(f"no ticket {args.ref}", file=sys.stderr)
            return 1
        try:
            changed = unlink_from_incident(
                session, ticket, actor=Actor(args.actor, "cli"), at=clock.now(), reason=args.reason
            )
        except AdminError as exc:
            print(exc, file=sys.stderr)
            return 1
        said = f"{ticket.reference}: " + ("unlinked" if changed else "linked to no incident")
    print(said)
    return 0
