"""The Twilio webhooks: SMS and voicemail in, validated, spooled, answered with TwiML.

Owns the Twilio contract (https://www.twilio.com/docs/usage/webhooks/webhooks-security):
* Every request MUST carry a valid `X-Twilio-Signature` for `[webhooks] public_url` + path (+
  query) and its form fields, checked with Twilio's own `RequestValidator`; anything else gets
  403 and a log line — also when no auth token is configured. `insecure_skip_signature` exists
  for local trials only and is logged loudly at every start.
* A 2xx MUST follow a returned spool write (DESIGN promise 1); a spool that cannot be written
  answers 503 so Twilio retries. Each event is spooled under its own dedup key
  (`twilio:sms:<MessageSid>`, `twilio:call:<CallSid>`, `twilio:gather:<CallSid>`,
  `twilio:recording:<RecordingSid>`, `twilio:transcription:<RecordingSid>`), so a replayed
  request gets the same answer and the pipeline records a duplicate, never a second ticket.
* Answers come well inside Twilio's 15 s timeout: no database, no network, no parsing of the
  message here. A live call consults only the in-memory customer directory, the pure
  `check_channel_entitlement` and the pure emergency rules (price and who may ask), so TwiML is
  returned with the database down.
* A body over `MAX_BODY_BYTES` gets 413 before anything reads it as a form (Twilio's own
  requests are a few kB: an SMS is at most 1,600 characters), so a stranger cannot make us buffer
  or parse megabytes before the signature check refuses them.
* TwiML is built with Twilio's `twiml` classes, never by string formatting. The voice flow never
  loops: <Gather> falls through to <Record>, and <Record>'s action only says goodbye. What is
  said is channels/call_script.py's; the price it states is the emergency rules' `quote`, and a
  keypress 1 is answered by their `refusal` (both pure: no clock of their own, no I/O).
Never parses, classifies or writes tickets: the worker does (`gateway/stages/parse_twilio.py`).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import parse_qsl, urlencode, urlparse

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from twilio.request_validator import RequestValidator, remove_port
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import Gather, VoiceResponse

from channels.call_script import (
    CALLER,
    GOODBYE,
    LEAVE_MESSAGE,
    NO_CHOICE,
    cannot_serve,
    emergency_prompt,
    keypress_answer,
)
from gateway import clock as business_clock
from gateway.config.gateway_schema import INSECURE_WEBHOOKS_WARNING
from gateway.config.loader import Settings
from gateway.config.schema import EmergencyFile
from gateway.emergency.rules import quote, refusal
from gateway.intake.faults import crash_point
from gateway.intake.spool import Envelope, Spool, SpoolFullError
from gateway.phone import normalise_phone
from gateway.policy.calendars import Calendar
from gateway.policy.directory import Directory
from gateway.policy.plans import Plans, check_channel_entitlement
from gateway.policy.sms import sms_keyword
from gateway.service.http_server import HttpServer, serve_http

log = logging.getLogger(__name__)

TWIML: Final = "application/xml"
MAX_BODY_BYTES: Final = 64 * 1024


class PlanTable(Protocol):
    """What a live call reads of the policy: plans, the calendars and emergency.toml (the
    price and its after-hours surcharge are stated on the call)."""

    @property
    def plans(self) -> Plans: ...
    @property
    def calendars(self) -> Mapping[str, Calendar]: ...
    @property
    def emergency(self) -> EmergencyFile: ...


class LiveConfig(Protocol):
    """What the webhooks read of the current runtime: settings, the in-memory directory and the
    plans (DESIGN: a live call may consult them). gateway.service.runtime.Runtime satisfies it;
    written as a protocol so a channel never imports the runtime, which builds the stages."""

    @property
    def settings(self) -> Settings: ...
    @property
    def directory(self) -> Directory: ...
    @property
    def policy(self) -> PlanTable: ...


@dataclass
class TwilioStats:
    accepted: int = 0
    forbidden: int = 0
    temp_failures: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "forbidden": self.forbidden,
            "temp_failures": self.temp_failures,
            "last_error": self.last_error,
        }


@dataclass
class TwilioChannel:
    """What the webhooks need: the spool, the current runtime (directory, plans, settings) and
    the auth token (read once at start from the environment or credentials via `secret()`)."""

    spool: Spool
    runtime: Callable[[], LiveConfig]
    auth_token: str | None
    stats: TwilioStats = field(default_factory=TwilioStats)

    # -- the contract's two checks: signature, then a durable spool write -------------------

    async def signed_params(self, request: Request) -> dict[str, str] | None:
        params = await form_fields(request)
        hooks = self.runtime().settings.gateway.webhooks
        if hooks.insecure_skip_signature:
            return params
        url = hooks.public_url.rstrip("/") + path_and_query(request.scope)
        signature = request.headers.get("x-twilio-signature", "")
        why = None
        if not self.auth_token:
            why = "no auth token configured ($GATEWAY_TWILIO_AUTH_TOKEN / twilio-auth-token)"
        elif not hooks.public_url:
            why = "[webhooks] public_url is not set"
        elif not signature:
            why = "no X-Twilio-Signature header"
        elif not signature_matches(self.auth_token, url, params, signature):
            why = f"X-Twilio-Signature does not match {url}"
        if why is None:
            return params
        self.stats.forbidden += 1
        client = request.client.host if request.client else "?"
        log.warning("twilio webhook %s from %s refused (403): %s", request.url.path, client, why)
        return None

    async def spool_event(
        self,
        request: Request,
        channel: str,
        event: str,
        key: str,
        params: dict[str, str],
        said: str = "",
    ) -> str | None:
        """Spool one event; None when it is durable, else the reason (answer 503). `said`: the
        words the caller hears in answer, recorded with the event (a call we cannot serve)."""
        payload: dict[str, object] = {
            "v": 1,
            "event": event,
            "path": url_path(request.scope),
            "query": dict(request.query_params),
            "params": params,
        }
        if said:
            payload["said"] = said
        raw = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
        caller = params.get("From") or request.query_params.get("caller") or ""
        env = Envelope(
            channel=channel,
            received_at=business_clock.now(),
            mail_from=normalise_phone(caller) if caller else "",
            recipients=(params["To"],) if params.get("To") else (),
            peer=request.client.host if request.client else None,
            channel_key=key,
            meta=(("twilio_event", event),),
        )
        try:
            await self.spool.enqueue_async(raw, env)
        except SpoolFullError as exc:
            why = f"spool full: {exc}"
        except Exception as exc:  # any failure to make it durable is ours: temporary
            why = f"spool write failed: {exc}"
        else:
            crash_point("after-spool-before-ack")
            self.stats.accepted += 1
            return None
        self.stats.temp_failures += 1
        self.stats.last_error = why
        log.error("twilio %s not spooled, answering 503: %s", event, why)
        return why

    def url(self, path: str, **query: str) -> str:
        base = self.runtime().settings.gateway.webhooks.public_url.rstrip("/")
        return f"{base}{path}" + (f"?{urlencode(query)}" if query else "")

    def record(self, response: VoiceResponse, caller: str) -> VoiceResponse:
        hooks = self.runtime().settings.gateway.webhooks
        response.record(
            action=self.url("/twilio/voice/done"),
            method="POST",
            max_length=hooks.record_max_seconds,
            play_beep=True,
            recording_status_callback=self.url("/twilio/voice/recording", caller=caller),
            recording_status_callback_method="POST",
            transcribe=True,
            transcribe_callback=self.url("/twilio/voice/transcription", caller=caller),
        )
        return response

    # -- endpoints ----------------------------------------------------------------------------

    async def sms(self, request: Request) -> Response:
        params = await self.signed_params(request)
        if params is None:
            return PlainTextResponse("forbidden", status_code=403)
        sid = params.get("MessageSid") or params.get("SmsSid")
        if not sid:
            return PlainTextResponse("MessageSid missing", status_code=400)
        if await self.spool_event(request, "twilio-sms", "sms", f"twilio:sms:{sid}", params):
            return PlainTextResponse("try again later", status_code=503)
        receipt = self.runtime().settings.gateway.webhooks.sms_receipt
        # STOP/START/HELP: Twilio answers those itself; a receipt on top would be noise.
        if sms_keyword(params.get("Body", "")) is not None:
            receipt = ""
        return Response(sms_twiml(receipt), media_type=TWIML)

    async def voice(self, request: Request) -> Response:
        params = await self.signed_params(request)
        if params is None:
            return PlainTextResponse("forbidden", status_code=403)
        runtime = self.runtime()
        hooks = runtime.settings.gateway.webhooks
        caller = normalise_phone(params.get("From", "")) if params.get("From") else ""
        customer = runtime.directory.identify(caller, "twilio-voice")
        entitlement = check_channel_entitlement(customer, "twilio-voice", runtime.policy.plans)
        response = VoiceResponse()
        if not entitlement.entitled and entitlement.action == "reject":
            call = params.get("CallSid", "")
            key = f"twilio:call:{call}"
            # How to reach us instead: the address our replies come from.
            address = runtime.settings.gateway.outbound.from_address
            said = cannot_serve(hooks.greeting, customer, entitlement, address)
            if await self.spool_event(request, "twilio-voice", "call", key, params, said):
                return PlainTextResponse("try again later", status_code=503)
            response.say(said)
            response.hangup()
            return Response(str(response), media_type=TWIML)
        response.say(hooks.greeting)
        policy = runtime.policy
        plan = policy.plans.get(customer.plan)
        if entitlement.entitled and plan.emergency:
            at = business_clock.now()
            prompt = emergency_prompt(quote(plan, policy.emergency, policy.calendars, at))
            # The words and their instant ride in the keypress URL, which Twilio signs: the
            # keypress's evidence records exactly what the caller heard, priced when they heard
            # it (gateway/emergency/rules.py: call_prompt, quoted_at).
            action = self.url(
                "/twilio/voice/gather",
                caller=caller,
                at=at.isoformat().replace("+00:00", "Z"),
                prompt=prompt,
            )
            gather = Gather(num_digits=1, action=action, method="POST", timeout=8)
            gather.say(prompt)
            response.append(gather)
            # No key pressed: Twilio falls through to here — a normal voicemail, never a loop.
            response.say(NO_CHOICE + " " + LEAVE_MESSAGE)
        else:
            response.say(LEAVE_MESSAGE)
        return Response(str(self.record(response, caller)), media_type=TWIML)

    async def gather(self, request: Request) -> Response:
        params = await self.signed_params(request)
        if params is None:
            return PlainTextResponse("forbidden", status_code=403)
        call = params.get("CallSid", "")
        if not call:
            return PlainTextResponse("CallSid missing", status_code=400)
        if await self.spool_event(
            request, "twilio-voice", "gather", f"twilio:gather:{call}", params
        ):
            return PlainTextResponse("try again later", status_code=503)
        caller = request.query_params.get("caller") or params.get("From", "")
        digit = params.get("Digits", "")
        refused = None
        if digit == "1":
            # The one emergency rule, asked as the worker will ask it: the caller hears what the
            # ticket and the SMS say (issue 18 item 4: never "noted" when it is not accepted).
            runtime = self.runtime()
            number = normalise_phone(caller) if caller else ""
            customer = runtime.directory.identify(number, "twilio-voice")
            plans = runtime.policy.plans
            entitled = check_channel_entitlement(customer, "twilio-voice", plans).entitled
            refused = refusal(customer, plans.get(customer.plan), entitled, "voice", CALLER)
        response = VoiceResponse()
        response.say(keypress_answer(digit, refused))
        return Response(str(self.record(response, caller)), media_type=TWIML)

    async def recording(self, request: Request) -> Response:
        return await self._callback(request, "recording")

    async def transcription(self, request: Request) -> Response:
        return await self._callback(request, "transcription")

    async def _callback(self, request: Request, event: str) -> Response:
        params = await self.signed_params(request)
        if params is None:
            return PlainTextResponse("forbidden", status_code=403)
        sid = params.get("RecordingSid", "")
        if not sid or not params.get("CallSid"):
            return PlainTextResponse("RecordingSid/CallSid missing", status_code=400)
        key = f"twilio:{event}:{sid}"
        if await self.spool_event(request, "twilio-voice", event, key, params):
            return PlainTextResponse("try again later", status_code=503)
        return Response(str(VoiceResponse()), media_type=TWIML)

    async def done(self, request: Request) -> Response:
        if await self.signed_params(request) is None:
            return PlainTextResponse("forbidden", status_code=403)
        response = VoiceResponse()
        response.say(GOODBYE)
        response.hangup()
        return Response(str(response), media_type=TWIML)


FORM: Final = "application/x-www-form-urlencoded"


async def form_fields(request: Request) -> dict[str, str]:
    """The request's form fields, as Starlette's `request.form()` gives them (the last value of
    a repeated name wins; files are not fields). Twilio posts urlencoded forms: those are read
    with the standard library's `parse_qsl`, which decodes them exactly as Starlette's parser
    does (latin-1 bytes, then `unquote_plus`) at a fifth of its cost (issue 20 outcome 2);
    anything else goes through `request.form()`."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != FORM:
        form = await request.form()
        return {k: v for k, v in form.multi_items() if isinstance(v, str)}
    body = await request.body()
    return dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))


def url_path(scope: Scope) -> str:
    """`request.url.path` as Starlette's `URL` gives it, read straight from the ASGI scope:
    building the whole `URL` (host header, netloc, urlsplit) cost a tenth of the SMS handler
    (issue 20 outcome 2)."""
    path: str = scope["path"]
    return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


def path_and_query(scope: Scope) -> str:
    """`url_path`, then "?" and `request.url.query` when there is a query."""
    query: bytes = scope.get("query_string", b"")
    return f"{url_path(scope)}?{query.decode()}" if query else url_path(scope)


class _Fields(dict[str, str]):
    """Form fields as Twilio's validator reads them: it asks a mapping for `getall`, then
    `getlist`, then indexes it, catching AttributeError each time; answering the first saves
    two raised exceptions a field, twice a request."""

    def getall(self, name: str) -> list[str]:
        return [self[name]]


@functools.lru_cache(maxsize=256)
def _without_port(url: str) -> str:
    """`url` as Twilio's validator first signs it: without a port."""
    return str(remove_port(urlparse(url)))


def signature_matches(token: str, url: str, params: Mapping[str, str], signature: str) -> bool:
    """Exactly Twilio's `RequestValidator.validate(url, params, signature)`, at half its cost
    for a request signed as Twilio signs it (issue 20 outcome 2): `validate` always computes
    two HMACs, for the URL without and with its port, and accepts either. The one without
    (Twilio's usual form) is tried first; only when it does not match is `validate` asked, so
    the answer is the validator's every time and a forged request costs what it did. (The
    validator's other check, a query's `bodySHA256`, applies to JSON bodies, never to form
    fields.)"""
    validator = RequestValidator(token)
    fields = _Fields(params)
    if hmac.compare_digest(validator.compute_signature(_without_port(url), fields).encode(),
                           signature.encode()):
        return True
    return bool(validator.validate(url, fields, signature))


@functools.lru_cache(maxsize=8)
def sms_twiml(receipt: str) -> str:
    """The TwiML that answers an SMS: `receipt` as a reply, or nothing when it is empty. Built
    with Twilio's classes once per receipt text (it is config), not once per message."""
    reply = MessagingResponse()
    if receipt:
        reply.message(receipt)
    return str(reply)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 and never reaches the
    app. Reads at most `max_bytes` + one chunk, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") or ("?",)
        log.warning(
            "twilio webhook %s from %s refused (413): body over %d bytes",
            scope.get("path"),
            client[0],
            self.max_bytes,
        )
        response = PlainTextResponse("request body too large", status_code=413)
        await response(scope, receive, send)


def build_app(channel: TwilioChannel) -> Starlette:
    if channel.runtime().settings.gateway.webhooks.insecure_skip_signature:
        log.critical(INSECURE_WEBHOOKS_WARNING)
    routes = [
        Route("/twilio/sms", channel.sms, methods=["POST"]),
        Route("/twilio/voice", channel.voice, methods=["POST"]),
        Route("/twilio/voice/gather", channel.gather, methods=["POST"]),
        Route("/twilio/voice/recording", channel.recording, methods=["POST"]),
        Route("/twilio/voice/transcription", channel.transcription, methods=["POST"]),
        Route("/twilio/voice/done", channel.done, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)])


async def start_webhooks(app: Starlette, host: str, port: int) -> HttpServer:
    """Serve the webhook app in the running loop (see gateway.service.http_server)."""
    return await serve_http(app, host, port)
