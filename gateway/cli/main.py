"""The `gateway` command: what an operator types. Thin: parses arguments and calls the owners.

Exit codes: 0 success, 1 a problem the output explains (bad config, unknown ticket), 2 usage;
`ingest` follows sysexits (see channels.pipe). Never holds business rules.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import clock as business_clock
from gateway.cli import ingest as cli_ingest
from gateway.cli.common import (
    STATUSES,
    load_settings,
    missing_database,
    open_db_session,
    open_spool,
    print_config_error,
)
from gateway.config.errors import ConfigError
from gateway.config.gateway_file import default_config_dir

if TYPE_CHECKING:
    from gateway.config.loader import Settings

# Everything else this module needs is imported where it is used: `gateway ingest` runs once
# per message under an MTA's pipe transport and must not pay for the loader, SQLAlchemy or
# the classifier (issue 20 outcome 3; `_light_parser`).


# ---- commands ---------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.config.loader import config_warnings
    from gateway.service.runtime import load_runtime

    try:
        runtime = load_runtime(Path(args.config))
    except ConfigError as exc:
        print_config_error(exc)
        return 1
    for warning in config_warnings(runtime.settings):  # worth a look, never a failure
        print(f"warning: {warning}", file=sys.stderr)
    print(f"config OK: {Path(args.config).absolute()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from gateway.cli.logs import setup_logging
    from gateway.config.loader import config_warnings
    from gateway.service.daemon import AlreadyRunningError, run_daemon
    from gateway.service.runtime import RuntimeBox, load_runtime
    from gateway.storage.db import is_sqlite, upgrade

    setup_logging(args.verbose)
    try:
        runtime = load_runtime(Path(args.config))
    except ConfigError as exc:
        print_config_error(exc)
        return 1
    settings = runtime.settings
    for warning in config_warnings(settings):
        logging.getLogger("gateway").warning("config: %s", warning)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if is_sqlite(settings.database_url):
        upgrade(settings.database_url)  # the embedded default upgrades itself
    try:
        return run_daemon(Path(args.config), RuntimeBox(Path(args.config), runtime))
    except AlreadyRunningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_worker(args: argparse.Namespace) -> int:
    from gateway.cli.logs import setup_logging
    from gateway.service.runtime import RuntimeBox, load_runtime, with_imported_accounts
    from gateway.service.worker import Worker, storage_unavailable

    setup_logging(args.verbose)
    runtime = load_runtime(Path(args.config))
    os.nice(runtime.settings.gateway.workers.nice)  # listeners' acceptance before the drain
    box = RuntimeBox(Path(args.config), runtime)
    worker = Worker(box, index=args.index, run_outbox=args.index == 0 and not args.drain)
    signal.signal(signal.SIGHUP, lambda *_: worker.reload_requested.set())
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    # Ctrl-C reaches the whole process group: finish the batch like SIGTERM, never abandon it.
    signal.signal(signal.SIGINT, lambda *_: worker.stopping.set())
    status_path: Path | None = None
    if not args.drain:
        status_dir = runtime.settings.state_dir / "status"
        status_dir.mkdir(parents=True, exist_ok=True)
        status_path = status_dir / f"worker-{args.index}.json"
        worker.write_status(status_path)
    _ensure_schema(runtime.settings.database_url, worker, storage_unavailable, status_path)
    # The database is up: add customers imported into it, and re-read them on every reload.
    from gateway.storage.customers import load_accounts

    box.imported_accounts = lambda: load_accounts(worker.sessions)
    box.current = with_imported_accounts(runtime, box.imported_accounts())
    if args.drain:
        n = worker.drain()
        print(f"processed {n} spool entries")
        return 0
    worker.run(status_path)
    return 0


def _ensure_schema(url: str, worker: Any, unavailable: Any, status_path: Path | None) -> None:
    """Bring the schema up to date, waiting for the database if it is down (intake goes on)."""
    import logging

    from gateway.storage.db import upgrade

    delay = 0.5
    while not worker.stopping.is_set():
        try:
            upgrade(url)
            worker.stats.storage_down_since = None
            return
        except Exception as exc:
            if not unavailable(exc):
                raise
            logging.getLogger("gateway.service.worker").error(
                "database unavailable at start: %s", exc
            )
            worker.stats.last_error = f"storage unavailable: {exc}"
            if worker.stats.storage_down_since is None:
                worker.stats.storage_down_since = business_clock.wall_seconds()
            if status_path is not None:
                worker.write_status(status_path)
            worker.stopping.wait(delay)
            delay = min(5.0, delay * 2)


def cmd_reload(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    pid = _daemon_pid(settings)
    if pid is None:
        print("no running gateway found (no daemon.lock pid)", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGHUP)
    print(f"sent SIGHUP to gateway pid {pid}; see its log or `gateway status` for the result")
    return 0


def _daemon_pid(settings: Settings) -> int | None:
    try:
        text = (settings.state_dir / "daemon.lock").read_text().strip()
        pid = int(text)
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def cmd_status(args: argparse.Namespace) -> int:

    settings = load_settings(args)
    status_dir = settings.state_dir / "status"
    out: dict[str, Any] = {"running": _daemon_pid(settings) is not None}
    daemon = status_dir / "daemon.json"
    if daemon.exists():
        out["daemon"] = json.loads(daemon.read_text())
    out["workers"] = [json.loads(p.read_text()) for p in sorted(status_dir.glob("worker-*.json"))]
    out["spool_depth"] = out["quarantine"] = 0
    if settings.spool_dir.is_dir():  # a read-only command never creates the state directory
        with open_spool(settings) as spool:
            out["spool_depth"] = spool.depth()
            out["quarantine"] = spool.quarantine_count()
    out["outbox"] = _outbox_backlog(settings)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"running:      {'yes' if out['running'] else 'no'}")
    d = out.get("daemon", {})
    for name, addr in d.get("listeners", {}).items():
        ch = d.get("channels", {}).get(name)
        if ch is None:
            # A listener with no intake counters (the API: it spools no messages) shows its
            # address only; "accepted=0" read as "the API served nothing" (issue 17 item 11).
            print(f"listener:     {name} {addr}")
            continue
        print(
            f"listener:     {name} {addr} accepted={ch.get('accepted', 0)} "
            f"temp_failures={ch.get('temp_failures', 0)} last_error={_last_error(ch)}"
        )
    print(f"spool depth:  {out['spool_depth']}")
    print(f"quarantine:   {out['quarantine']}")
    for channel, backlog in (out["outbox"] or {}).items():
        line = f"outbox {channel}:{' ' * max(1, 6 - len(channel))}{backlog['depth']} waiting"
        oldest = backlog["oldest"]
        if oldest is not None:
            line += (
                f", oldest {_age(oldest['age_seconds'])} ({oldest['attempts']} attempt(s)): "
                f"{oldest['reason']}"
            )
        print(line)
    for w in out["workers"]:
        print(
            f"worker {w['index']}:     processed={w['processed']} lag={w['lag_seconds']}s "
            f"failures={w['failures']} last_error={w['last_error']}"
        )
    if d.get("config_error"):
        print(f"config error: {d['config_error']}")
    return 0


def _last_error(channel: dict[str, Any]) -> str:
    """A channel's error as of now: the current one with its time, or none now and the past one
    with its time and when it was over (an IMAP mailbox that recovered, issue 18 item 9)."""
    error, at = channel.get("last_error"), channel.get("last_error_at")
    if error is not None:
        return f"{error} (since {at})" if at else str(error)
    past = channel.get("past_error")
    if past is None:
        return "None"
    return (
        f"None (past: {past} at {channel.get('past_error_at')}; fetching again since "
        f"{channel.get('recovered_at')})"
    )


def _outbox_backlog(settings: Settings) -> dict[str, Any] | None:
    """Outbox depth per channel and the oldest waiting row's reason and age; None without a
    database (a read-only command never creates one)."""
    from gateway import clock
    from gateway.storage.queries import outbox_backlog

    if missing_database(settings) is not None:
        return None
    with open_db_session(settings) as session:
        backlog: dict[str, Any] = outbox_backlog(session, clock.now())
        return backlog


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cmd_customers_import(args: argparse.Namespace) -> int:
    from gateway.storage.customers import import_csv
    from gateway.storage.db import make_engine, session_factory, upgrade

    settings = load_settings(args)
    upgrade(settings.database_url)
    plan_names = [p.name for p in settings.plans.plan] or ["none"]
    sessions = session_factory(make_engine(settings.database_url))
    print(f"importing {args.file}")
    report = import_csv(sessions, Path(args.file), plan_names, sys.stdout)
    for line, problem in report.errors:
        print(f"{args.file}:{line}: {problem}", file=sys.stderr)
    print(
        f"{report.rows} rows: {report.accounts} accounts, {report.contacts} contacts imported, "
        f"{len(report.errors)} rows rejected"
    )
    if report.accounts:
        print("run `gateway reload` so the running daemon knows them")
    return 1 if report.errors else 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from gateway.storage.db import upgrade

    settings = load_settings(args)
    upgrade(settings.database_url)
    print("database schema is up to date")
    return 0


def cmd_escalate(args: argparse.Namespace) -> int:
    """One escalation scheduler run now (or --at a time); --dry-run only says what it would do."""
    from datetime import datetime

    from gateway.config.loader import load
    from gateway.outbound.escalation_scheduler import run_once
    from gateway.policy.calendars import build_calendars
    from gateway.storage.db import make_engine, session_factory

    # The full config, not load_lenient: a broken calendars.toml must not escalate on defaults.
    settings = load(Path(args.config))
    if not settings.severity.escalation.steps:
        print("escalation is off: severity.toml has no [[escalation.steps]]", file=sys.stderr)
        return 0
    now = business_clock.now()
    if args.at:
        try:
            now = datetime.fromisoformat(args.at)
        except ValueError:
            print(
                f"--at {args.at!r} is not an ISO time such as 2026-11-30T08:30:00Z", file=sys.stderr
            )
            return 2
        if now.tzinfo is None:
            print(
                "--at needs a timezone, such as 2026-11-30T08:30:00-05:00 or ...Z", file=sys.stderr
            )
            return 2
    engine = make_engine(settings.database_url, immediate=True)
    try:
        done = run_once(
            session_factory(engine),
            settings,
            build_calendars(settings.calendars),
            now,
            args.dry_run,
        )
    finally:
        engine.dispose()
    for escalated in done:
        print(("would escalate " if args.dry_run else "escalated ") + escalated.line())
    if not done:
        print(f"nothing to escalate at {now.isoformat()}")
    return 0


# ---- parser -----------------------------------------------------------------------------------


def _channel_argument(parser: argparse.ArgumentParser) -> None:
    """--channel of classify and explain: one spelling for both (voice: voicemail's alias)."""
    parser.add_argument(
        "--channel",
        choices=("email", "sms", "voicemail", "voice"),
        default="email",
        help="email (default), sms or voicemail (alias: voice); an SMS or voicemail file is "
        "plain text or the spooled Twilio JSON",
    )


def _top_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The `gateway` parser with its global options, and its (still empty) subcommands."""
    p = argparse.ArgumentParser(prog="gateway", description="Intake Gateway")
    p.add_argument(
        "--config",
        default=str(default_config_dir()),
        help="config directory (default: $GATEWAY_CONFIG or ./config)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p, p.add_subparsers(dest="command", required=True)


def _light_parser() -> argparse.ArgumentParser:
    """The parser for `gateway ingest` alone: the full one imports every command's module
    (billing, privacy and tickets bring SQLAlchemy), which a process per message cannot pay."""
    p, sub = _top_parser()
    cli_ingest.register(sub)
    return p


def _command_of(argv: list[str]) -> str | None:
    """The subcommand's name, skipping the global options; None if unsure (the full parser
    then decides, so a spelling this misses is only slower, never wrong)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            i += 2
        elif arg.startswith("--config=") or arg in ("-v", "--verbose"):
            i += 1
        else:
            return None if arg.startswith("-") else arg
    return None


def build_parser() -> argparse.ArgumentParser:
    from gateway.cli.classifier import cmd_classify, cmd_evaluate, cmd_explain, cmd_train
    from gateway.cli.common import DEFAULT_PAGE
    from gateway.cli.spool import cmd_quarantine, cmd_spool
    from gateway.cli.tickets import (
        cmd_show,
        cmd_ticket_link_incident,
        cmd_ticket_set_severity,
        cmd_ticket_set_status,
        cmd_ticket_unlink_incident,
        cmd_tickets,
    )

    p, sub = _top_parser()

    sub.add_parser("run", help="run the daemon").set_defaults(func=cmd_run)
    sub.add_parser("check-config", help="validate the config; exit 1 on any problem").set_defaults(
        func=cmd_check_config
    )
    sub.add_parser(
        "reload", help="make the running daemon re-read its config (SIGHUP)"
    ).set_defaults(func=cmd_reload)
    s = sub.add_parser("status", help="listeners, spool depth, quarantine, worker lag, errors")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    cli_ingest.register(sub)

    s = sub.add_parser("worker", help="(internal) process the spool")
    s.add_argument("--index", type=int, default=0)
    s.add_argument("--drain", action="store_true", help="process until the spool is empty, exit")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser(
        "tickets",
        help="the queue, in queue order (FLAGS: H held, J jumps the queue, E emergency, "
        "e emergency not yet acknowledged)",
    )
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--all", action="store_true", help="every ticket, resolved and closed too, no page limit"
    )
    s.add_argument(
        "--limit", type=int, help=f"at most this many (default {DEFAULT_PAGE}; none with --all)"
    )
    s.add_argument("--offset", type=int, default=0, help="skip this many (the next page)")
    s.set_defaults(func=cmd_tickets)

    s = sub.add_parser("show", help="one ticket with messages and explanation")
    s.add_argument("ref")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    t = sub.add_parser("ticket", help="change a ticket").add_subparsers(dest="t_cmd", required=True)
    s = t.add_parser("set-status")
    s.add_argument("ref")
    s.add_argument("status", choices=STATUSES)
    s.add_argument("--reason", default="")
    s.add_argument(
        "--resolution",
        choices=("solution", "workaround", "enhancement_request", "escalated_to_development"),
        help="how it was resolved (with resolved or closed)",
    )
    s.add_argument("--actor", default=os.environ.get("USER", "cli"))
    s.set_defaults(func=cmd_ticket_set_status)
    s = t.add_parser("set-severity")
    s.add_argument("ref")
    s.add_argument("level")
    s.add_argument("--reason", required=True)
    s.add_argument("--actor", default=os.environ.get("USER", "cli"))
    s.set_defaults(func=cmd_ticket_set_severity)
    s = t.add_parser("link-incident", help="make a ticket part of an emergency's incident")
    s.add_argument("ref")
    s.add_argument("emergency", help="the emergency ticket (its incident)")
    s.add_argument("--reason", required=True)
    s.add_argument("--actor", default=os.environ.get("USER", "cli"))
    s.set_defaults(func=cmd_ticket_link_incident)
    s = t.add_parser("unlink-incident", help="take a ticket out of the incident it is part of")
    s.add_argument("ref")
    s.add_argument("--reason", required=True)
    s.add_argument("--actor", default=os.environ.get("USER", "cli"))
    s.set_defaults(func=cmd_ticket_unlink_incident)

    sp = sub.add_parser("spool", help="inspect the spool").add_subparsers(
        dest="spool_cmd", required=True
    )
    sp.add_parser("list")
    s = sp.add_parser("show")
    s.add_argument("id")
    s = sp.add_parser("replay", help="put a quarantined entry back ('all' for every one)")
    s.add_argument("id")
    for name in ("list", "show", "replay"):
        sp.choices[name].set_defaults(func=cmd_spool)

    q = sub.add_parser("quarantine", help="poison messages").add_subparsers(
        dest="q_cmd", required=True
    )
    q.add_parser("list").set_defaults(func=cmd_quarantine)
    s = q.add_parser("replay")
    s.add_argument("id", help="entry id, or 'all'")
    s.set_defaults(func=cmd_quarantine)

    s = sub.add_parser("classify", help="the classifier's verdict for a message; creates nothing")
    s.add_argument("file", help="message file, or - for stdin")
    _channel_argument(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_classify)

    s = sub.add_parser("train", help="retrain the model from the shipped corpus + agents' labels")
    s.add_argument("--force", action="store_true", help="install even if not better")
    s.add_argument("--no-labels", action="store_true", help="ignore agents' corrections")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "evaluate",
        help="precision/recall/F1 and confusion on a labelled file (--data), or the three "
        "honest evaluations per channel (--honest; the default without --data)",
    )
    s.add_argument("--data", help="CSV or JSONL with subject, body, level")
    s.add_argument("--model-only", action="store_true", help="the model alone, without rules")
    s.add_argument(
        "--honest",
        action="store_true",
        help="dev set, leave-one-domain-out and eval.jsonl, pooled and per channel",
    )
    s.add_argument(
        "--folds", type=int, help="leave-one-domain-out folds (default 8: about a minute)"
    )
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("explain", help="the whole decision for a message; creates nothing")
    s.add_argument("file", help="message file, or - for stdin")
    _channel_argument(s)
    s.add_argument("--from", dest="sender", help="treat the message as sent by this address")
    s.add_argument("--at", help="decide as at this ISO 8601 time (default: now)")
    s.set_defaults(func=cmd_explain)

    c = sub.add_parser("customers", help="customers in the database").add_subparsers(
        dest="c_cmd", required=True
    )
    s = c.add_parser("import", help="import accounts and contacts from CSV (one row a contact)")
    s.add_argument("file")
    s.set_defaults(func=cmd_customers_import)

    s = sub.add_parser("escalate", help="escalate tickets due now (the daemon does it too)")
    s.add_argument(
        "--dry-run", action="store_true", help="change nothing, print what would be done"
    )
    s.add_argument("--at", help="as if it were this ISO time (with a timezone) instead of now")
    s.set_defaults(func=cmd_escalate)

    d = sub.add_parser("db", help="database schema").add_subparsers(dest="db_cmd", required=True)
    d.add_parser("upgrade").set_defaults(func=cmd_db_upgrade)

    from gateway.cli import billing as cli_billing
    from gateway.cli import intakes as cli_intakes
    from gateway.cli import privacy as cli_retention
    from gateway.cli import simulate as cli_simulate
    from gateway.cli import tokens as cli_api

    for module in (cli_intakes, cli_billing, cli_retention, cli_api, cli_simulate):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _light_parser() if _command_of(argv) == "ingest" else build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe must raise here, not at exit
    except ConfigError as exc:
        print_config_error(exc)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    return code


def _reader_went_away() -> int:
    """`gateway tickets | head`: the reader closed the pipe. Exit quietly, as a program killed
    by SIGPIPE does (128 + 13), with no traceback (issue 17 item 7). Python ignores SIGPIPE,
    so the write raised; stdout is pointed at /dev/null so the flush at exit cannot raise again
    (the Python docs' "Note on SIGPIPE", in the signal module)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE

