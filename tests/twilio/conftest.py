"""Twilio test kit: the webhook app served by uvicorn over a real socket, requests signed
exactly as Twilio signs them, and a fake Twilio REST API (a real HTTP server that records what
the gateway's SMS sender posts — the only stand-in in these tests)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from channels.twilio import TwilioChannel, build_app, start_webhooks
from gateway.intake.spool import Spool
from gateway.service.runtime import load_runtime
from tests.helpers import Gateway

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://gw.example.test"
SID = "AC" + "0" * 32
OUR_NUMBER = "+16175550199"
BASIC_PHONE = "+16175550155"
GROWTH_PHONE = "+16175550100"  # the sample customer acme-clinic (Dana)

BASIC_CUSTOMER = """
[[account]]
id = "corner-shop"
name = "Corner Shop"
plan = "basic"

  [[account.contacts]]
  name = "Lee Park"
  phone = "+16175550155"
"""


class FakeTwilioApi:
    """A real HTTP server answering like Twilio's Messages endpoint; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                api.requests.append((self.path, form))
                body = json.dumps(
                    {"sid": f"SM{len(api.requests):032d}", "status": "queued", **form}
                ).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def texts(self) -> list[dict[str, str]]:
        return [form for path, form in self.requests if path.endswith("/Messages.json")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AppServer:
    """channels/twilio.py's app under uvicorn in a thread, spooling into `config`'s spool."""

    def __init__(self, config: Path, token: str | None = TOKEN, port: int = 0) -> None:
        runtime = load_runtime(config)
        self.spool = Spool(runtime.settings.spool_dir, fsync=False)
        self.channel = TwilioChannel(self.spool, lambda: runtime, token)
        self.port = port
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await start_webhooks(build_app(self.channel), "127.0.0.1", self.port)
        self.port = server.port
        self._ready.set()
        await self._stop.wait()
        await server.stop()

    def start(self) -> AppServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.spool.close()


def signed_post(
    port: int,
    path: str,
    params: dict[str, str],
    *,
    token: str = TOKEN,
    public: str = PUBLIC,
    signature: str | None = None,
    sign: bool = True,
) -> tuple[int, str]:
    """POST like Twilio: urlencoded form, X-Twilio-Signature over public URL + path + params."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if sign:
        headers["X-Twilio-Signature"] = signature or RequestValidator(token).compute_signature(
            public + path, params
        )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=urllib.parse.urlencode(params).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sms_params(body: str, sid: str, sender: str = GROWTH_PHONE, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": SID,
        "From": sender,
        "To": OUR_NUMBER,
        "Body": body,
        "NumMedia": "0",
        **extra,
    }


def twiml(text: str) -> ET.Element:
    return ET.fromstring(text)


def path_of(url: str) -> str:
    """The path+query of an absolute URL in TwiML (what the next signed request goes to)."""
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilioApi]:
    api = FakeTwilioApi()
    yield api
    api.close()


@pytest.fixture
def twilio_config(
    make_config: Callable[..., Path], fake_twilio: FakeTwilioApi
) -> Callable[..., Path]:
    """The sample config with webhooks on port 0, signed by TOKEN, outbound SMS to the fake."""

    def factory(**overrides: object) -> Path:
        settings: dict[str, object] = {
            "webhooks__port": 0,
            "webhooks__public_url": PUBLIC,
            "webhooks__account_sid": SID,
            "webhooks__from_number": OUR_NUMBER,
            "webhooks__rest_base_url": fake_twilio.url,
        }
        settings.update(overrides)
        config = make_config(**settings)
        with (config / "customers.toml").open("a") as fh:
            fh.write(BASIC_CUSTOMER)
        return config

    return factory


@pytest.fixture
def twilio_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TWILIO_AUTH_TOKEN", TOKEN)


@pytest.fixture
def app_and_gateway(
    twilio_config: Callable[..., Path], twilio_env: None
) -> Iterator[tuple[AppServer, Gateway]]:
    config = twilio_config()
    gw = Gateway(config)
    app = AppServer(config).start()
    yield app, gw
    app.stop()
    gw.close()
