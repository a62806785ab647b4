"""How fast can the spool make messages durable? (gateway.intake.spool enqueue throughput)

Three runs over the same number of ~4 KB messages, each in a fresh spool directory:

  (a) sync    enqueue() one at a time, fsync on: one file fsync + one directory fsync per message
  (b) async   enqueue_async() from N concurrent producers: the writer thread groups the
              directory fsync across every write pending at that moment
  (c) nofsync enqueue() with fsync off: the ceiling set by everything except the disk flush

It prints msgs/s for each and the ratio (b)/(c) measured in the same run, i.e. how much of the
no-durability speed the grouped durable path keeps. No assertions: numbers depend on the disk.

    .venv/bin/python bench/spool_fsync.py [--messages 2000] [--size 4096] [--producers 20]
                                          [--dir /var/spool/somewhere-on-the-target-disk]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import clock
from gateway.intake.spool import Envelope, Spool


def make_message(n: int, size: int) -> bytes:
    head = f"From: bench@example.com\r\nMessage-ID: <{n}@bench>\r\nSubject: bench {n}\r\n\r\n"
    body = b"x" * max(0, size - len(head))
    return head.encode() + body


def envelope() -> Envelope:
    return Envelope(
        channel="smtp",
        received_at=clock.now(),
        mail_from="bench@example.com",
        recipients=("support@example.net",),
        peer="127.0.0.1",
    )


def run_sync(root: Path, messages: list[bytes], *, fsync: bool) -> tuple[float, Spool]:
    spool = Spool(root, fsync=fsync, min_free_bytes=0)
    env = envelope()
    started = time.perf_counter()
    for raw in messages:
        spool.enqueue(raw, env)
    elapsed = time.perf_counter() - started
    spool.close()
    return elapsed, spool


def run_async(root: Path, messages: list[bytes], producers: int) -> tuple[float, Spool]:
    spool = Spool(root, fsync=True, min_free_bytes=0)
    env = envelope()

    async def producer(share: list[bytes]) -> None:
        for raw in share:
            await spool.enqueue_async(raw, env)

    async def main() -> float:
        shares = [messages[i::producers] for i in range(producers)]
        started = time.perf_counter()
        await asyncio.gather(*(producer(share) for share in shares))
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    spool.close()
    return elapsed, spool


def report(label: str, count: int, elapsed: float, spool: Spool) -> float:
    rate = count / elapsed
    print(
        f"{label:<44} {rate:>10.0f} msgs/s  {elapsed:7.2f} s  "
        f"file fsyncs {spool.file_fsyncs:>5}  dir fsyncs {spool.dir_fsyncs:>5}"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--producers", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None, help="parent dir (default: $TMPDIR)")
    args = parser.parse_args()

    messages = [make_message(n, args.size) for n in range(args.messages)]
    with tempfile.TemporaryDirectory(prefix="spool-bench-", dir=args.dir) as base:
        where = Path(base)
        fs = os.statvfs(where)
        print(
            f"{args.messages} messages of {args.size} bytes in {where} "
            f"(block size {fs.f_bsize}), {args.producers} async producers"
        )
        a_time, a_spool = run_sync(where / "a", messages, fsync=True)
        a = report("(a) sync enqueue, fsync on", args.messages, a_time, a_spool)
        b_time, b_spool = run_async(where / "b", messages, args.producers)
        b = report(
            f"(b) enqueue_async x{args.producers}, grouped fsync", args.messages, b_time, b_spool
        )
        c_time, c_spool = run_sync(where / "c", messages, fsync=False)
        c = report("(c) sync enqueue, fsync off", args.messages, c_time, c_spool)
        print(f"(b)/(c) = {b / c:.3f}   (b)/(a) = {b / a:.2f}")


if __name__ == "__main__":
    main()
