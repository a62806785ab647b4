"""SMTP intake benchmark: the real daemon against a bare aiosmtpd ceiling, measured in one run.

Drives N messages over loopback with C concurrent SMTP sessions, first at a bare aiosmtpd server
whose handler does nothing (the ceiling), then at `gateway run` on SQLite and on PostgreSQL.
Prints accept rate, accept p50/p99, end-to-end rate (first byte sent -> last ticket committed),
the ratio to the bare ceiling (end to end too: issue 20 outcome 2 wants 40 %), what the
messages became (tickets, follow-ups, discards), and per-stage worker cost (µs/message).
Prints; never asserts. The messages (--mail):

  support       Endava help-desk tickets sent as email from the sample customers' contacts,
                each its own Message-ID: every one becomes a ticket (the issue's measure)
  spamassassin  the SpamAssassin corpus, Message-IDs rewritten so it repeats without dedup:
                most of it is list mail and spam, recorded and discarded, never a ticket

    .venv/bin/python bench/smtp_intake.py [--messages 5000] [--sessions 20] [--no-postgres]
        [--mail support|spamassassin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "mail" / "spamassassin"
sys.path.insert(0, str(ROOT))

from tests.helpers import configure, free_port, pg_available  # noqa: E402


def load_messages(n: int) -> list[bytes]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"corpus not found at {CORPUS}")
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        raw = files[i % len(files)].read_bytes()
        if raw.startswith(b"From "):
            raw = raw.split(b"\n", 1)[1]
        # A fresh Message-ID per send, so repeating the corpus is new mail, not duplicates.
        mid = f"<bench-{len(out)}@bench.example>".encode()
        raw, count = re.subn(rb"(?im)^message-id:.*$", b"Message-ID: " + mid, raw, count=1)
        if not count:
            raw = b"Message-ID: " + mid + b"\n" + raw
        out.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        i += 1
    return out


def load_support_mail(n: int) -> list[bytes]:
    """Every one a ticket: help-desk tickets as mail from known contacts (bench/stage_budgets)."""
    import csv
    import textwrap

    from bench.stage_budgets import TICKETS, contacts, support_mail

    senders = contacts(ROOT / "config")
    with TICKETS.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["body"].strip()]
    def body(text: str) -> str:  # SMTP refuses lines over 1,000 characters (RFC 5321)
        return "\n".join(textwrap.fill(line, 900) if len(line) > 900 else line
                         for line in text.splitlines())

    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        raw = support_mail(i, senders[i % len(senders)], row["title"], body(row["body"]))
        out.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return out


def drive(port: int, messages: list[bytes], sessions: int) -> tuple[float, list[float], int]:
    """Send every message; return (elapsed seconds, per-message latencies, failures)."""
    work: queue.Queue[bytes] = queue.Queue()
    for m in messages:
        work.put(m)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def session() -> None:
        client = smtplib.SMTP("127.0.0.1", port, timeout=60)
        client.ehlo("bench.example")
        mine: list[float] = []
        while True:
            try:
                raw = work.get_nowait()
            except queue.Empty:
                break
            t = time.perf_counter()
            try:
                client.sendmail("sender@bench.example", ["support@example.com"], raw)
            except smtplib.SMTPException:
                with lock:
                    failures[0] += 1
            mine.append(time.perf_counter() - t)
        client.quit()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=session) for _ in range(sessions)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, failures[0]


def bare_server(port: int) -> None:
    """A bare aiosmtpd server whose handler does nothing: the ceiling."""
    from aiosmtpd.smtp import SMTP

    class Nothing:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(
            lambda: SMTP(Nothing(), data_size_limit=50_000_000, decode_data=False),
            "127.0.0.1",
            port,
        )
        await asyncio.Event().wait()

    asyncio.run(main())


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def run_bare(messages: list[bytes], sessions: int) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port)])
    try:
        wait_port(port)
        elapsed, lat, fails = drive(port, messages, sessions)
    finally:
        proc.terminate()
        proc.wait()
    return {"rate": len(messages) / elapsed, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
            "failures": fails}


def run_gateway(messages: list[bytes], sessions: int, url: str | None, workdir: Path,
                workers: int) -> dict[str, float]:
    import psycopg  # noqa: F401  (fail early if the driver is missing)
    from sqlalchemy import create_engine, func, select

    from gateway.storage.models import Intake

    state = workdir / "state"
    models = ROOT / ".state" / "models"
    if models.exists():
        shutil.copytree(models, state / "models")
    port = free_port()
    overrides: dict[str, object] = {"smtp__port": port, "workers__processes": workers,
                                    "smtp__max_sessions": 500}
    if url:
        overrides["storage__url"] = url
    config = configure(ROOT / "config", workdir / "config", state, as_shipped=True, **overrides)
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "run"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port)
        db_url = url or f"sqlite:///{state / 'gateway.db'}"
        # Time only once every worker is up (schema upgraded, model loaded): each writes its
        # status file from its run loop. A fixed pause would time a daemon still starting
        # whenever the machine is slow.
        deadline = time.monotonic() + 300
        while len(list((state / "status").glob("worker-*.json"))) < workers:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the workers did not start: see {workdir / 'daemon.log'}")
            time.sleep(0.1)
        engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
        t0 = time.perf_counter()
        elapsed, lat, fails = drive(port, messages, sessions)
        done_at = None
        while True:
            with engine.connect() as c:
                n = c.execute(select(func.count()).select_from(Intake)).scalar_one()
            if n >= len(messages) - fails:
                done_at = time.perf_counter()
                break
            if time.perf_counter() - t0 > 900:
                break
            time.sleep(0.05)
        e2e = (len(messages) - fails) / ((done_at or time.perf_counter()) - t0)
        with engine.connect() as c:
            became = dict(
                c.execute(select(Intake.outcome, func.count()).group_by(Intake.outcome)).all()
            )
        stage_us: dict[str, float] = {}
        for status in (state / "status").glob("worker-*.json"):
            data = json.loads(status.read_text())
            count = max(1, data.get("stage_count", 1))
            for stage, secs in data.get("stage_seconds", {}).items():
                stage_us[stage] = stage_us.get(stage, 0.0) + secs / count * 1e6 / workers
        engine.dispose()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    out: dict[str, float] = {"rate": len(messages) / elapsed, "p50": pct(lat, 0.5),
                             "p99": pct(lat, 0.99), "failures": fails, "e2e": e2e}
    out.update({f"stage_{k}": v for k, v in stage_us.items()})
    out.update({f"outcome_{k}": float(v) for k, v in became.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--bare-server", type=int)
    ap.add_argument("--mail", choices=("support", "spamassassin"), default="support")
    args = ap.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return
    load = load_support_mail if args.mail == "support" else load_messages
    messages = load(args.messages)
    size = sum(map(len, messages)) / len(messages)
    print(f"{len(messages)} {args.mail} messages (mean {size / 1024:.1f} KiB), "
          f"{args.sessions} sessions, "
          f"{args.workers} worker process(es), {os.cpu_count()} CPUs")
    bare = run_bare(messages, args.sessions)
    results = {"bare aiosmtpd": bare}
    with tempfile.TemporaryDirectory() as tmp:
        results["gateway sqlite"] = run_gateway(messages, args.sessions, None, Path(tmp) / "s",
                                                args.workers)
        if not args.no_postgres and pg_available():
            import psycopg

            name = f"gw_bench_{os.getpid()}"
            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test",
                                 autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{name}"')
            try:
                results["gateway postgresql"] = run_gateway(
                    messages, args.sessions,
                    f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
                    Path(tmp) / "p", args.workers)
            finally:
                with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test",
                                     autocommit=True) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"\n{'':20} {'accept/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'vs bare':>8} "
          f"{'e2e/s':>7} {'e2e vs bare':>11} {'fail':>5}")
    for name, r in results.items():
        ratio = r["rate"] / bare["rate"]
        e2e = f"{r['e2e']:7.0f}" if "e2e" in r else f"{'-':>7}"
        e2e_ratio = f"{r['e2e'] / bare['rate']:11.0%}" if "e2e" in r else f"{'-':>11}"
        print(f"{name:20} {r['rate']:9.0f} {r['p50']:7.2f} {r['p99']:7.2f} {ratio:8.0%} {e2e} "
              f"{e2e_ratio} {int(r['failures']):5d}")
    for name, r in results.items():
        became = {k[8:]: int(v) for k, v in r.items() if k.startswith("outcome_")}
        if became:
            print(f"{name} made: " + ", ".join(f"{v} {k}" for k, v in sorted(became.items())))
    for name, r in results.items():
        stages = {k[6:]: v for k, v in r.items() if k.startswith("stage_")}
        if stages:
            total = sum(stages.values())
            parts = "  ".join(f"{k}={v:.0f}" for k, v in stages.items())
            print(f"\n{name} worker µs/message: {parts}  total={total:.0f}")
    _ = statistics


if __name__ == "__main__":
    main()
