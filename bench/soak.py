"""Soak benchmark: steady mixed load against the real daemon for a long time (30 minutes by
default), printing the time series and a summary. The engine and the flatness rules are those of
the 2-minute soak test (tests/soak/load.py): SMTP, `gateway ingest` processes and signed Twilio
SMS at fixed rates, sampled every interval for the daemon's and workers' RSS and open file
descriptors (/proc), spool depth, intakes recorded and acceptance latency (median per window).
Prints; never asserts.

    .venv/bin/python bench/soak.py [--minutes 30] [--interval 10] [--smtp 4] [--pipe 0.2]
                                   [--sms 2] [--postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import CapturingRelay, DaemonProcess, configure, pg_available  # noqa: E402
from tests.soak.load import PUBLIC, TOKEN, Rates, Soak, header, judge, row, summary  # noqa: E402
from tests.twilio.conftest import FakeTwilioApi  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--smtp", type=float, default=4.0, help="SMTP messages per second")
    ap.add_argument("--pipe", type=float, default=0.2, help="`gateway ingest` runs per second")
    ap.add_argument("--sms", type=float, default=2.0, help="signed SMS webhooks per second")
    ap.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = ap.parse_args()

    relay = CapturingRelay()
    relay.start()
    api = FakeTwilioApi()
    db_name = f"gw_soak_{os.getpid()}"
    url = ""
    if args.postgres:
        if not pg_available():
            raise SystemExit(f"PostgreSQL is not running at {ADMIN}")
        import psycopg

        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"
    work = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    daemon: DaemonProcess | None = None
    try:
        models = ROOT / ".state" / "models"
        if models.exists():  # a model trained before saves the first start a minute
            shutil.copytree(models, work / "state" / "models")
        overrides: dict[str, object] = {
            "outbound__enabled": True,
            "outbound__relay_port": relay.port,
            "webhooks__public_url": PUBLIC,
            "webhooks__account_sid": "AC" + "0" * 32,
            "webhooks__from_number": "+16175550199",
            "webhooks__rest_base_url": api.url,
        }
        if url:
            overrides["storage__url"] = url
        config = configure(ROOT / "config", work / "config", work / "state", as_shipped=True,
                           **overrides)
        daemon = DaemonProcess(config, env={"GATEWAY_TWILIO_AUTH_TOKEN": TOKEN})
        daemon.start(timeout=300)
        rates = Rates(smtp=args.smtp, pipe=args.pipe, sms=args.sms)
        soak = Soak(daemon, rates, interval=args.interval)
        print(
            f"soak: {args.minutes:g} min, SMTP {rates.smtp}/s, pipe {rates.pipe}/s, "
            f"SMS {rates.sms}/s, sample every {args.interval:g} s, "
            f"{'PostgreSQL' if url else 'SQLite'}, {os.cpu_count()} CPUs"
        )
        print(header())
        started = time.monotonic()
        soak.run(args.minutes * 60, on_sample=lambda s: print(row(s), flush=True))
        ended = soak.drain(timeout=900)
        elapsed = time.monotonic() - started
        accepted = sum(soak.counters.accepted.values())
        print()
        print(summary(soak, judge(soak.samples)))
        status = daemon.status()
        print(
            f"accepted {accepted}, intakes {ended}, lost {accepted - ended}, quarantined "
            f"{status['quarantine']}; {ended / elapsed:.1f} intakes/s over {elapsed:.0f} s; "
            f"max spool depth {max(s.spool_depth for s in soak.samples)}; "
            f"relay got {len(relay.messages)} mails, Twilio API {len(api.texts())} texts; "
            f"load errors {len(soak.errors)}"
        )
        for error in soak.errors[:10]:
            print("  error:", error)
    finally:
        if daemon is not None:
            daemon.stop()
        relay.stop()
        api.close()
        shutil.rmtree(work, ignore_errors=True)
        if url:
            import psycopg

            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
