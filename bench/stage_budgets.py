"""Each worker stage's cost per message against issue 20's budget table, in process.

Realistic support mail where every message becomes a ticket (not discarded list mail): each of
--messages Endava help-desk tickets (title and body, `../shared/data/tickets/endava`) is sent as
an email from one of the sample config's customer contacts, with its own Message-ID, into a
fresh spool and SQLite database (or, with --postgresql, a fresh database on the local
PostgreSQL the tests use); the worker drains it (`Worker.drain`, its batches and its
pipeline timings) and the bench prints each stage's mean µs per message beside its budget,
the tickets made, and the drain's wall rate. Blobs, classify and commit are per batch and are
divided by the messages. Measurement only; nothing is asserted.

`--corpus spamassassin` drains instead the peer bench's work (bench/vs_django_helpdesk.py): the
fair copies of the first --messages SpamAssassin easy-ham mails, longer mail of which about
half joins an earlier message's ticket as a follow-up. The budgets are the issue's for support
mail that all becomes tickets; on this mix they are printed for comparison only.

    .venv/bin/python bench/stage_budgets.py [--messages 2000] [--postgresql] [--batch-size N]
        [--corpus endava|spamassassin]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
import tomllib
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKETS = ROOT.parent / "shared" / "data" / "tickets" / "endava" / "all_tickets.csv"
sys.path.insert(0, str(ROOT))

from gateway import clock  # noqa: E402
from gateway.pipeline import Timings  # noqa: E402
from tests.helpers import Gateway, configure  # noqa: E402

# Issue 20 outcome 1, µs per message. None: not in the table (printed, not judged).
BUDGETS: dict[str, int | None] = {
    "parse": 200,
    "blobs": None,
    "identify": 50,
    "thread": 100,
    "classify": 300,  # one call per batch, shared out over its messages
    "decide": 100,
    "persist": 500,  # SQLite (700 on PostgreSQL); the savepoint's release included
    "commit": None,
}
PERSIST_BUDGET_POSTGRESQL = 700
TOTAL_BUDGET = 1500
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def contacts(config: Path) -> list[str]:
    data = tomllib.loads((config / "customers.toml").read_text())
    return [c["email"] for a in data.get("account", []) for c in a.get("contacts", [])]


def support_mail(n: int, sender: str, title: str, body: str) -> bytes:
    subject = (title or body[:60] or "help").replace("\r", " ").replace("\n", " ")
    return (
        f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
        f"Date: {format_datetime(clock.now())}\r\nMessage-ID: <bench-{n}@customer.example>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--postgresql", action="store_true", help="a fresh database at " + PG_ADMIN_URL)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="workers.batch_size (default: the sample config's)")
    ap.add_argument("--corpus", choices=("endava", "spamassassin"), default="endava",
                    help="endava: support mail, every message a ticket (the budgets' case); "
                         "spamassassin: the peer bench's fair copies, about half follow-ups")
    ap.add_argument("--warm-up", type=int, default=0,
                    help="first drain this many OTHER tickets of the corpus, untimed: a worker "
                         "that has run a while (the classifier's per-word memo filled) rather "
                         "than one just started (default 0: cold)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gw-stages-"))
    database = f"bench_stages_{os.getpid()}"
    budgets = dict(BUDGETS)
    overrides: dict[str, object] = {}
    if args.batch_size is not None:
        overrides["workers__batch_size"] = args.batch_size
    if args.postgresql:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        overrides["storage__url"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        budgets["persist"] = PERSIST_BUDGET_POSTGRESQL
    try:
        state = work / "state"
        trained = ROOT / ".state" / "models"
        if trained.exists():  # the model is trained once, outside the timing
            shutil.copytree(trained, state / "models")
        config = configure(ROOT / "config", work / "config", state, **overrides)
        senders = contacts(config)
        with TICKETS.open(newline="", encoding="utf-8") as fh:
            every = [r for r in csv.DictReader(fh) if r["body"].strip()]
        # The warm-up's tickets come after the measured ones in the corpus: never the same text.
        rows = every[: args.messages]
        warm_rows = every[args.messages : args.messages + args.warm_up]
        gw = Gateway(config)
        try:
            for n, row in enumerate(warm_rows, start=len(rows)):
                gw.ingest(support_mail(n, senders[n % len(senders)], row["title"], row["body"]))
            gw.drain()
            warmed = len(gw.intakes())
            gw.worker.timings = Timings()
            if args.corpus == "spamassassin":
                from bench.vs_django_helpdesk import fair_copy, first_messages

                for path in first_messages(args.messages):
                    gw.ingest(fair_copy(path.read_bytes()))
            else:
                for n, row in enumerate(rows):
                    gw.ingest(support_mail(n, senders[n % len(senders)], row["title"],
                                           row["body"]))
            started = time.perf_counter()
            gw.drain()
            seconds = time.perf_counter() - started
            timings = gw.worker.timings
            outcomes: dict[str, int] = {}
            for intake in gw.intakes()[warmed:]:
                outcomes[intake.outcome] = outcomes.get(intake.outcome, 0) + 1
        finally:
            gw.close()
        drained = sum(outcomes.values())
        count = max(1, timings.count)
        what = (
            "SpamAssassin easy-ham fair copies (the peer bench's work)"
            if args.corpus == "spamassassin"
            else f"support emails (Endava tickets from {len(senders)} customer contacts)"
        )
        print(
            f"{drained} {what}, "
            f"{'PostgreSQL' if args.postgresql else 'SQLite'}, in process; "
            f"{os.cpu_count()} CPUs shared with other work, load {os.getloadavg()[0]:.2f}"
        )
        print(f"outcomes: {outcomes}")
        state_of_worker = (
            f"warm: {warmed} other tickets drained first, untimed" if warmed
            else "cold (just started)"
        )
        print(f"worker: {state_of_worker}")
        print(f"{'stage':10} {'µs/msg':>8} {'budget':>8}  ")
        total = 0.0
        # In the path's order (persist's share of a batch is charged before the first message).
        order = [*BUDGETS, *(stage for stage in timings.totals if stage not in BUDGETS)]
        for stage in (stage for stage in order if stage in timings.totals):
            seconds_total = timings.totals[stage]
            us = seconds_total / count * 1e6
            total += us
            budget = budgets.get(stage)
            mark = "" if budget is None else ("ok" if us <= budget else f"x{us / budget:.1f}")
            shown = "-" if budget is None else str(budget)
            print(f"{stage:10} {us:8.0f} {shown:>8}  {mark}")
        print(f"{'total':10} {total:8.0f} {TOTAL_BUDGET:>8}  x{total / TOTAL_BUDGET:.1f}")
        per = seconds / max(1, drained) * 1e3
        print(f"drain: {drained / seconds:.0f} msg/s wall ({per:.2f} ms a message)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.postgresql:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
