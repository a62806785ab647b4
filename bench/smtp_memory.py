"""How much memory does a large mail cost the SMTP listener? (issue 20 outcome 5)

A listener process is started per mode, over its own spool (fsync on), and sent:

  one     one mail with a 25 MiB attachment (about 34 MiB on the wire, base64)
  ten     ten such mails at once, on ten sessions

For each it prints the listener's RSS when idle, its peak RSS during the sends (VmHWM, reset
before each phase through /proc/<pid>/clear_refs) and its RSS a few seconds after, in MB, and
the peak's rise over idle as a multiple of the attachment. Modes, in the same run:

  streamed   the gateway's listener (channels/smtp.py: DATA past 1 MiB streams to the spool)
  held       aiosmtpd's own DATA (every line kept, joined, handed over whole), spooled by the
             same spool: the listener as it was before the change

The worker is measured the same way (mode `worker`): `gateway worker` over the sample config,
warmed by one small mail, then the same mails spooled by `gateway ingest` (one, then ten at
once with their own Message-IDs); its peak while it turns them into tickets, and its RSS after.

No assertions: the figures depend on the allocator, the kernel and the machine's load.

    .venv/bin/python bench/smtp_memory.py [--mib 25] [--concurrent 10]
        [--modes streamed,held,worker]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB = 1_000_000


def attachment_mail(mib: int) -> bytes:
    payload = base64.encodebytes(os.urandom(mib * 1024 * 1024)).replace(b"\n", b"\r\n")
    head = (
        b"From: dana@acme-clinic.example\r\nTo: support@example.com\r\n"
        b"Subject: the core dump\r\nMessage-ID: <dump@acme-clinic.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nAttached.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream; name=core\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head + payload + b"--b1--\r\n"


# ---- the listener process ---------------------------------------------------------------------


def serve(mode: str, spool_dir: Path, port_file: Path, max_bytes: int) -> None:
    from aiosmtpd.smtp import SMTP

    from channels.smtp import Acceptance, IntakeHandler, ListenerConfig, start_listener
    from gateway import clock
    from gateway.intake.spool import Envelope, Spool

    spool = Spool(spool_dir, min_free_bytes=0)
    accept = Acceptance(frozenset({"support@example.com"}), frozenset())

    class Held:
        """The listener before the change: aiosmtpd's DATA, the whole message spooled."""

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            env = Envelope("smtp", clock.now(), envelope.mail_from, tuple(envelope.rcpt_tos))
            entry = await spool.enqueue_async(envelope.original_content, env)
            return f"250 2.0.0 Queued as {entry}"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if mode == "streamed":
            cfg = ListenerConfig("127.0.0.1", 0, False, 100, 300, max_bytes, "bench")
            server = await start_listener(IntakeHandler(spool, lambda: accept), cfg)
        else:
            server = await loop.create_server(
                lambda: SMTP(Held(), data_size_limit=max_bytes, decode_data=False),
                "127.0.0.1",
                0,
            )
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await asyncio.Event().wait()

    asyncio.run(main())


# ---- the driver -------------------------------------------------------------------------------


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)


def send(port: int, raw: bytes, errors: list[str]) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
            client.sendmail("dana@acme-clinic.example", ["support@example.com"], raw)
    except Exception as exc:
        errors.append(repr(exc))


def phase(pid: int, port: int, raw: bytes, count: int) -> tuple[int, int, float]:
    reset_peak(pid)
    errors: list[str] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=send, args=(port, raw, errors)) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"sends failed: {errors[:3]}")
    peak = status(pid)["VmHWM"]
    time.sleep(3)
    return peak, status(pid)["VmRSS"], elapsed


def run_mode(mode: str, raw: bytes, mib: int, concurrent: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode, "--spool", f"{tmp}/spool",
             "--port-file", str(port_file), "--max-bytes", str(len(raw) * 2)]
        )
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            port = int(port_file.read_text())
            time.sleep(0.5)
            idle = status(child.pid)["VmRSS"]
            size = mib * 1024 * 1024
            for label, count in (("one", 1), (f"{concurrent} at once", concurrent)):
                peak, after, elapsed = phase(child.pid, port, raw, count)
                print(
                    f"{mode:9} {label:12} idle {idle / MB:7.1f}  peak {peak / MB:7.1f}  "
                    f"after {after / MB:7.1f}  peak-idle {(peak - idle) / MB:7.1f} MB "
                    f"= {(peak - idle) / size:5.2f}x the attachment  ({elapsed:.1f} s)"
                )
        finally:
            child.terminate()
            child.wait(10)


def worker_mode(raw: bytes, mib: int, concurrent: int) -> None:
    """The worker's peak for the same mails (see the module docstring)."""
    from tests.helpers import configure

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        config = configure(root / "config", Path(tmp) / "config", Path(tmp) / "state")
        spool = Path(tmp) / "state" / "spool"
        gateway = [sys.executable, "-m", "gateway"]

        def ingest(message: bytes) -> None:
            subprocess.run(
                [*gateway, "--config", str(config), "ingest"],
                input=message,
                check=True,
                capture_output=True,
            )

        def drained() -> None:
            while any(any((spool / d).glob("*.msg")) for d in ("incoming", "claimed")):
                time.sleep(0.05)

        log = open(Path(tmp) / "worker.log", "wb")  # noqa: SIM115 - closed with the process
        child = subprocess.Popen([*gateway, "--config", str(config), "worker"], stderr=log)
        try:
            ingest(b"From: dana@acme-clinic.example\r\nSubject: warm up\r\n\r\nhello\r\n")
            drained()
            time.sleep(1.0)
            idle = status(child.pid)["VmRSS"]
            size = mib * 1024 * 1024
            for label, count in (("one", 1), (f"{concurrent} at once", concurrent)):
                reset_peak(child.pid)
                started = time.perf_counter()
                copies = [
                    raw.replace(b"<dump@", f"<dump-{count}-{n}@".encode(), 1)
                    for n in range(count)
                ]
                threads = [threading.Thread(target=ingest, args=(c,)) for c in copies]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                del copies
                drained()
                elapsed = time.perf_counter() - started
                peak = status(child.pid)["VmHWM"]
                time.sleep(3)
                after = status(child.pid)["VmRSS"]
                print(
                    f"{'worker':9} {label:12} idle {idle / MB:7.1f}  peak {peak / MB:7.1f}  "
                    f"after {after / MB:7.1f}  peak-idle {(peak - idle) / MB:7.1f} MB "
                    f"= {(peak - idle) / size:5.2f}x the attachment  ({elapsed:.1f} s)"
                )
        finally:
            child.terminate()
            child.wait(30)
            log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=25)
    ap.add_argument("--concurrent", type=int, default=10)
    ap.add_argument("--modes", default="streamed,held,worker")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--spool", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--max-bytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.spool, args.port_file, args.max_bytes)
        return
    raw = attachment_mail(args.mib)
    print(
        f"{args.mib} MiB attachment, {len(raw) / MB:.1f} MB on the wire; listener RSS in MB "
        f"(1 MB = 10^6 bytes), fsync on; {os.cpu_count()} CPUs shared with other work"
    )
    for mode in args.modes.split(","):
        if mode == "worker":
            worker_mode(raw, args.mib, args.concurrent)
        else:
            run_mode(mode, raw, args.mib, args.concurrent)


if __name__ == "__main__":
    main()
