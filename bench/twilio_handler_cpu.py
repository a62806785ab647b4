"""The Twilio SMS webhook's own CPU cost, without HTTP: the app of `channels/twilio.py` called
directly through ASGI in this process (no uvicorn, no sockets), beside a constant-TwiML route of
the same app called the same way, in one run. Prints CPU µs and wall µs per request for each,
and their ratio; `--tree DIR` runs another checkout's app instead (for before and after).

Each signed request is a fresh MessageSid signed as Twilio signs it; the spool writes with the
sample config's fsync setting into a fresh state directory; `--concurrency` requests are in
flight at once, as at the HTTP bench's 64 connections. What the HTTP bench
(`twilio_webhooks.py`) adds on top is uvicorn and h11, the same for both routes. Printed only.

    .venv/bin/python bench/twilio_handler_cpu.py [--requests 3000] [--concurrency 64]
        [--tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
PUBLIC = "https://gw.example.test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose app runs")
    args = ap.parse_args()
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from twilio.request_validator import RequestValidator
    from twilio.twiml.messaging_response import MessagingResponse

    import channels.twilio
    from channels.twilio import TwilioChannel, build_app
    from gateway.intake.spool import Spool
    from gateway.service.runtime import load_runtime
    from tests.helpers import configure

    tmp = Path(tempfile.mkdtemp(prefix="bench-twilio-cpu-"))
    config = configure(tree / "config", tmp / "config", tmp / "state",
                       webhooks__public_url=PUBLIC, webhooks__port=0)
    runtime = load_runtime(config, with_classifier=False)
    spool = Spool(runtime.settings.spool_dir, fsync=runtime.settings.gateway.spool.fsync)
    app = build_app(TwilioChannel(spool, lambda: runtime, TOKEN))
    constant = str(MessagingResponse().message("Thank you, we received your message."))

    async def constant_twiml(_request: Request) -> Response:
        return Response(constant, media_type="application/xml")

    app.router.routes.append(Route("/constant", constant_twiml, methods=["POST"]))
    validator = RequestValidator(TOKEN)

    def signed(i: int) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
        params = {"MessageSid": f"SM{i:032d}", "AccountSid": "AC" + "0" * 32,
                  "From": "+16175550100", "To": "+16175550199",
                  "Body": f"Printer {i} offline since this morning", "NumMedia": "0"}
        body = urllib.parse.urlencode(params).encode()
        signature = validator.compute_signature(PUBLIC + "/twilio/sms", params)
        return "/twilio/sms", body, [(b"x-twilio-signature", signature.encode())]

    async def call(path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        scope: dict[str, Any] = {
            "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
            "asgi": {"version": "3.0"}, "client": ("127.0.0.1", 5555),
            "server": ("127.0.0.1", 80),
            "headers": [(b"host", b"127.0.0.1"),
                        (b"content-type", b"application/x-www-form-urlencoded"),
                        (b"content-length", str(len(body)).encode()), *headers],
        }
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status != [200]:
            raise SystemExit(f"{path} answered {status}")

    async def run(requests: list[tuple[str, bytes, list[tuple[bytes, bytes]]]]
                  ) -> tuple[float, float]:
        pending = list(reversed(requests))

        async def client() -> None:
            while pending:
                await call(*pending.pop())

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        n = len(requests)
        return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6

    async def both() -> None:
        await run([signed(10**9 + i) for i in range(200)])  # warm: imports, first spool files
        sms_cpu, sms_wall = await run([signed(i) for i in range(args.requests)])
        const_cpu, const_wall = await run([("/constant", b"", [])] * args.requests)
        print(f"app {channels.twilio.__file__}, {args.requests} requests, "
              f"{args.concurrency} at once, fsync={runtime.settings.gateway.spool.fsync}")
        print(f"{'route':<12} {'CPU µs/req':>11} {'wall µs/req':>12}")
        print(f"{'signed SMS':<12} {sms_cpu:>11.0f} {sms_wall:>12.0f}")
        print(f"{'constant':<12} {const_cpu:>11.0f} {const_wall:>12.0f}")
        print(f"constant / signed CPU: {const_cpu / sms_cpu:.2f}")

    asyncio.run(both())
    spool.close()


if __name__ == "__main__":
    main()
