"""How fast do the Twilio webhooks answer? Signed SMS webhooks over loopback, printed only.

The app of `channels/twilio.py` runs under uvicorn in this process, spooling (fsync on) into a
fresh state directory of the sample config. A separate load process sends pre-signed
`POST /twilio/sms` requests (each with its own MessageSid, signed as Twilio signs them) over
keep-alive HTTP/1.1 connections at increasing concurrency, and the same number of requests to
`/constant`, a route of the same app answering a constant TwiML without signature check or
spool write. Printed per concurrency: req/s, p50/p99 latency, and the ratio of the two rates in
the same run. No assertions: numbers depend on the disk and the machine.

    .venv/bin/python bench/twilio_webhooks.py [--requests 2000] [--concurrency 1,8,32,64]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from channels.twilio import TwilioChannel, build_app, start_webhooks
from gateway.intake.spool import Spool
from gateway.service.runtime import load_runtime
from tests.helpers import configure

TOKEN = "bench-token"
PUBLIC = "https://gw.example.test"
ROOT = Path(__file__).resolve().parent.parent


def presign(n: int, offset: int) -> list[bytes]:
    validator = RequestValidator(TOKEN)
    out: list[bytes] = []
    for i in range(n):
        params = {
            "MessageSid": f"SM{offset + i:032d}",
            "AccountSid": "AC" + "0" * 32,
            "From": "+16175550100",
            "To": "+16175550199",
            "Body": f"Printer {i} offline since this morning",
            "NumMedia": "0",
        }
        body = urllib.parse.urlencode(params).encode()
        sig = validator.compute_signature(PUBLIC + "/twilio/sms", params)
        out.append(
            b"POST /twilio/sms HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"X-Twilio-Signature: {sig}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return out


def constant_requests(n: int) -> list[bytes]:
    return [b"POST /constant HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"] * n


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def _load(port: int, requests: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    queue = list(reversed(requests))
    latencies: list[float] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            raw = queue.pop()
            t = time.perf_counter()
            writer.write(raw)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                raise RuntimeError(f"status {status}")
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def load_process(port: int, requests: list[bytes], concurrency: int, out: object) -> None:
    elapsed, lat = asyncio.run(_load(port, requests, concurrency))
    out.put((elapsed, lat))  # type: ignore[attr-defined]


def run_load(port: int, requests: list[bytes], concurrency: int) -> tuple[float, float, float]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=load_process, args=(port, requests, concurrency, out))
    proc.start()
    elapsed, lat = out.get()
    proc.join()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return len(requests) / elapsed, statistics.median(lat) * 1000, p99 * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,8,32,64")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-twilio-"))
    config = configure(
        ROOT / "config",
        tmp / "config",
        tmp / "state",
        webhooks__public_url=PUBLIC,
        webhooks__port=0,
    )
    runtime = load_runtime(config, with_classifier=False)
    spool = Spool(runtime.settings.spool_dir, fsync=runtime.settings.gateway.spool.fsync)
    channel = TwilioChannel(spool, lambda: runtime, TOKEN)
    app = build_app(channel)
    constant = str(MessagingResponse().message("Thank you, we received your message."))

    async def constant_twiml(_request: Request) -> Response:
        return Response(constant, media_type="application/xml")

    app.router.routes.append(Route("/constant", constant_twiml, methods=["POST"]))
    ready = threading.Event()
    ports: list[int] = []

    async def serve() -> None:
        server = await start_webhooks(app, "127.0.0.1", 0)
        ports.append(server.port)
        ready.set()
        await asyncio.Event().wait()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    ready.wait(10)
    port = ports[0]
    print(f"fsync={runtime.settings.gateway.spool.fsync} requests={args.requests} per run")
    print(
        f"{'conc':>5} {'signed req/s':>13} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'const req/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}"
    )
    offset = 0
    for conc in (int(c) for c in args.concurrency.split(",")):
        signed = presign(args.requests, offset)
        offset += args.requests
        s_rate, s50, s99 = run_load(port, signed, conc)
        c_rate, c50, c99 = run_load(port, constant_requests(args.requests), conc)
        print(
            f"{conc:>5} {s_rate:>13.0f} {s50:>8.2f} {s99:>8.2f} "
            f"{c_rate:>12.0f} {c50:>8.2f} {c99:>8.2f} {s_rate / c_rate:>6.2f}"
        )
    print(f"spooled: {spool.depth()} entries (accepted {channel.stats.accepted})")


if __name__ == "__main__":
    main()
