"""One gateway instance versus two on one PostgreSQL database, measured in one run.

Sends N messages over SMTP (20 sessions) to one instance, then the same number split across two
instances (each its own state directory and spool, one shared database), and prints accept rate
and end-to-end rate (first message sent -> last intake committed) for both and their ratio. On
this 2-core machine the point is correctness without contention collapse, not a 2x speed-up.
Prints; never asserts.

    .venv/bin/python bench/two_instances.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smtp_intake import drive, load_messages, wait_port  # noqa: E402
from tests.helpers import configure, free_port, pg_available  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def start(workdir: Path, name: str, url: str) -> tuple[subprocess.Popen[bytes], int]:
    state = workdir / name / "state"
    models = ROOT / ".state" / "models"
    if models.exists():
        shutil.copytree(models, state / "models")
    port = free_port()
    config = configure(ROOT / "config", workdir / name / "config", state, as_shipped=True,
                       smtp__port=port,
                       storage__url=url, gateway__instance=name, smtp__max_sessions=500,
                       api__enabled=False, webhooks__enabled=False)
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "run"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port(port)
    return proc, port


def intakes(url: str) -> int:
    import psycopg

    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT count(*) FROM intakes").fetchone()
        return int(row[0]) if row else 0


def run(n_instances: int, messages: list[bytes], workdir: Path) -> tuple[float, float]:
    import psycopg

    db = f"gw_two_{os.getpid()}_{n_instances}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    procs = []
    try:
        ports = []
        for i in range(n_instances):
            proc, port = start(workdir / str(n_instances), f"gw{i}", url)
            procs.append(proc)
            ports.append(port)
        time.sleep(3)  # workers up, schema migrated
        shares = [messages[i::n_instances] for i in range(n_instances)]
        t0 = time.perf_counter()
        results: list[float] = []
        threads = [threading.Thread(target=lambda p=p, s=s: results.append(
            drive(p, s, 20 // n_instances)[0])) for p, s in zip(ports, shares, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accept = len(messages) / (time.perf_counter() - t0)
        while intakes(url) < len(messages) - 20 and time.perf_counter() - t0 < 900:
            time.sleep(0.1)
        e2e = intakes(url) / (time.perf_counter() - t0)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return accept, e2e


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    if not pg_available():
        raise SystemExit("PostgreSQL at 127.0.0.1:5432 is needed")
    messages = load_messages(args.messages)
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, messages, Path(tmp))
        two = run(2, messages, Path(tmp))
    print(f"{len(messages)} messages over SMTP, PostgreSQL, {os.cpu_count()} CPUs")
    print(f"{'':14} {'accept/s':>9} {'e2e/s':>7}")
    print(f"{'one instance':14} {one[0]:9.0f} {one[1]:7.0f}")
    print(f"{'two instances':14} {two[0]:9.0f} {two[1]:7.0f}")
    print(f"ratio two/one:  accept {two[0] / one[0]:.2f}  end-to-end {two[1] / one[1]:.2f}")


if __name__ == "__main__":
    main()
