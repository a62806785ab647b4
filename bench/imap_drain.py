"""IMAP drain benchmark: how fast `gateway run` empties a mailbox with a backlog, and whether its
memory stays flat as the backlog grows.

APPENDs N messages (--mail: help-desk tickets from the sample customers, every one a ticket, by
default; or the SpamAssassin corpus, Message-IDs rewritten so it repeats as new mail) to a
throwaway Dovecot (tests/imap/dovecot.py, the same server the tests use). First the baseline: a
bare imapclient session fetches the whole mailbox (BODY.PEEK[] in batches of --batch-size, as
the poller does, read-only) and does nothing with it. Then, on the same mailbox, it starts
`gateway run` (the sample config, SQLite, one `[[imap]]` mailbox) and measures until the INBOX
is empty and every message is an intake row (ticket, duplicate or discard). Prints messages/s
(from the daemon's start and from its first intake row), and the peak RSS of all the gateway's
processes (daemon and workers, summed from /proc) when 1,000 and when N messages are in.
Prints the drain into tickets as a share of the bare fetch (issue 20 outcome 2 wants 50 %).
Prints; never asserts.

    .venv/bin/python bench/imap_drain.py [--messages 10000] [--workers 1] [--batch-size 50]
        [--mail support|spamassassin]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smtp_intake import load_messages, load_support_mail  # noqa: E402
from tests.helpers import configure  # noqa: E402
from tests.imap.dovecot import PASSWORD, Dovecot, start_dovecot  # noqa: E402

USER = "bench"
MAILBOX = "bench"
CHECKPOINT = 1000


def family(root: int) -> list[int]:
    """`root` and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    out, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        out.extend(frontier)
    return out


def rss_kib(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of VmHWM) in KiB over `pids`."""
    rss = hwm = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
        except OSError:
            continue
    return rss, hwm


def intake_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return int(conn.execute("SELECT count(*) FROM intakes").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0


def append_all(server: Dovecot, messages: list[bytes], chunk: int = 500) -> float:
    started = time.perf_counter()
    with server.client(USER, timeout=300) as client:
        for i in range(0, len(messages), chunk):
            client.multiappend("INBOX", messages[i : i + chunk])
    return time.perf_counter() - started


def bare_fetch(server: Dovecot, n: int, batch_size: int) -> float:
    """Seconds for a bare imapclient session to fetch the whole INBOX, batch by batch."""
    started = time.perf_counter()
    with server.client(USER, timeout=300) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["ALL"])
        fetched = 0
        for i in range(0, len(uids), batch_size):
            fetched += len(client.fetch(uids[i : i + batch_size], ["BODY.PEEK[]"]))
    took = time.perf_counter() - started
    if fetched != n:
        raise SystemExit(f"bare fetch got {fetched} of {n} messages")
    return took


def drain(
    server: Dovecot, workdir: Path, n: int, workers: int, batch_size: int, bare_rate: float
) -> None:
    state = workdir / "state"
    models = ROOT / ".state" / "models"
    if models.exists():
        shutil.copytree(models, state / "models")
    config = configure(
        ROOT / "config",
        workdir / "config",
        state, as_shipped=True,
        workers__processes=workers,
        smtp__port=0,
        webhooks__enabled=False,  # HTTP listeners: their default port 8080 may be taken,
        api__enabled=False,  # and they are not what this measures
    )
    with open(config / "gateway.toml", "a") as fh:
        fh.write(
            f'\n[[imap]]\nname = "{MAILBOX}"\nhost = "127.0.0.1"\nport = {server.port}\n'
            f'tls = "plain"\nallow_plaintext = true\nusername = "{USER}"\n'
            f'recipients = ["support@example.com"]\nbatch_size = {batch_size}\n'
        )
    # Build the classifier model (if it was not copied) before the clock starts.
    subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "check-config"],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, f"GATEWAY_IMAP_PASSWORD_{MAILBOX.upper()}": PASSWORD}
    db = state / "gateway.db"
    with open(workdir / "daemon.log", "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    peak = peak_hwm = 0
    at_checkpoint: tuple[int, int, float] | None = None
    first_row: float | None = None
    inbox, rows, last_inbox_check = n, 0, 0.0
    emptied: float | None = None
    first_taken: float | None = None  # the poller's first MOVE seen in the INBOX count
    try:
        while True:
            now = time.perf_counter()
            if proc.poll() is not None:
                raise SystemExit(f"gateway exited {proc.returncode}; see {workdir / 'daemon.log'}")
            rss, hwm = rss_kib(family(proc.pid))
            peak, peak_hwm = max(peak, rss), max(peak_hwm, hwm)
            rows = intake_rows(db)
            if rows and first_row is None:
                first_row = now
            if at_checkpoint is None and rows >= min(CHECKPOINT, n):
                at_checkpoint = (peak, peak_hwm, now - t0)
            if now - last_inbox_check > 0.2:
                inbox, last_inbox_check = server.count(USER), now
                if inbox < n and first_taken is None:
                    first_taken = now
                if inbox == 0 and emptied is None:
                    emptied = now
            quarantined = server.count(USER, "Quarantine") if inbox == 0 else 0
            if inbox == 0 and rows + quarantined >= n:
                done = time.perf_counter()
                break
            if now - t0 > 3600:
                raise SystemExit(f"not done after an hour: inbox={inbox} intake rows={rows}")
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert at_checkpoint is not None and first_row is not None
    assert emptied is not None and first_taken is not None
    total = done - t0
    print(f"messages:                    {n} (intake rows {rows}, quarantined {quarantined})")
    print(f"workers:                     {workers}, IMAP batch_size {batch_size}")
    imap_rate = n / max(emptied - first_taken, 0.2)
    print(f"mailbox empty after:         {emptied - t0:.1f} s from `gateway run`; IMAP -> spool "
          f"{imap_rate:.0f} msg/s from the first message moved")  # fmt: skip
    print(f"all intake rows after:       {total:.1f} s from `gateway run` -> {n / total:.0f} msg/s")
    print(f"  from the first intake row: {done - first_row:.1f} s -> "
          f"{n / (done - first_row):.0f} msg/s")  # fmt: skip
    print(f"bare imapclient fetch:       {bare_rate:.0f} msg/s; drain into tickets from the "
          f"first message moved: {n / (done - first_taken):.0f} msg/s = "
          f"{n / (done - first_taken) / bare_rate:.0%} of bare")  # fmt: skip
    cp_peak, cp_hwm, cp_at = at_checkpoint
    print(f"peak RSS, all processes:     {cp_peak / 1024:.0f} MiB at {min(CHECKPOINT, n)} "
          f"({cp_at:.1f} s), {peak / 1024:.0f} MiB at {n}")  # fmt: skip
    print(f"sum of per-process VmHWM:    {cp_hwm / 1024:.0f} MiB at {min(CHECKPOINT, n)}, "
          f"{peak_hwm / 1024:.0f} MiB at {n}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--mail", choices=("support", "spamassassin"), default="support")
    args = ap.parse_args()
    messages = (load_support_mail if args.mail == "support" else load_messages)(args.messages)
    size = sum(map(len, messages)) / len(messages)
    workdir = Path(tempfile.mkdtemp(prefix="gw-imap-bench-"))
    server = start_dovecot()
    try:
        took = append_all(server, messages)
        print(f"appended:                    {len(messages)} messages, mean {size / 1024:.1f} KiB, "
              f"in {took:.1f} s")  # fmt: skip
        bare = bare_fetch(server, len(messages), args.batch_size)
        print(f"bare fetch:                  {len(messages)} in {bare:.1f} s")
        drain(server, workdir, len(messages), args.workers, args.batch_size,
              len(messages) / bare)  # fmt: skip
    finally:
        server.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
