"""The SMTP (or LMTP) listener: accept mail for our addresses, spool it, and only then say 250.

Owns the SMTP contract (RFC 5321):
* RCPT for an address or domain we do not serve MUST get 550 5.1.1 — we are never an open relay.
* A message over the configured size MUST get 552 (aiosmtpd enforces `data_size_limit`).
* 250 MUST follow a returned spool write, never precede it (DESIGN promise 1).
* Our own faults MUST be 4xx: 452 4.3.1 when the spool is full, 451 4.3.0 otherwise. aiosmtpd's
  default `handle_exception` answers 500 with the exception text; we override it.
* Nothing blocks the event loop: the spool write runs on the spool's writer thread.
* DATA is never held whole: past 256 KiB it streams into its spool file (channels/smtp_data.py),
  and the 250 still waits for that file and incoming/ to be fsynced.
* More than `max_sessions` concurrent sessions get 421 and are closed.
* Stopping (`IntakeHandler.shut_down`, after the daemon closed the listening socket): a
  transaction in progress (MAIL given, DATA not yet answered) finishes and gets its reply; any
  other command gets `421 4.3.2 Service shutting down` and the session is closed (RFC 5321 3.8);
  sessions still open after the grace period get that 421 and are closed.
Never parses, classifies or touches the database.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from channels.smtp_data import Body, smtp_data
from gateway import clock as business_clock
from gateway.intake.faults import crash_point
from gateway.intake.spool import Envelope, Spool, SpoolFullError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Acceptance:
    """Which recipients we take mail for. Swapped on reload."""

    recipients: frozenset[str]
    domains: frozenset[str]

    def accepts(self, address: str) -> bool:
        addr = address.strip().strip("<>").lower()
        if addr in self.recipients:
            return True
        return "@" in addr and addr.rsplit("@", 1)[1] in self.domains


@dataclass
class ChannelStats:
    accepted: int = 0
    refused_recipients: int = 0
    temp_failures: int = 0
    sessions: int = 0
    last_error: str | None = None


class IntakeHandler:
    """aiosmtpd handler: each hook returns the SMTP reply line."""

    def __init__(
        self,
        spool: Spool,
        acceptance: Callable[[], Acceptance],
        *,
        channel: str = "smtp",
        lmtp: bool = False,
    ) -> None:
        self.spool = spool
        self.acceptance = acceptance
        self.channel = channel
        self.lmtp = lmtp
        self.stats = ChannelStats()
        self.sessions = _Sessions()

    async def shut_down(self, grace_seconds: float) -> None:
        """Refuse new transactions with 421; let those in progress finish for up to
        `grace_seconds`, then answer 421 to whatever is left and close it. Call after the
        listening socket is closed, and before the spool is closed."""
        sessions = self.sessions
        sessions.shutting_down = True
        for protocol in list(sessions.live):
            if protocol.envelope.mail_from is None:  # between transactions: nothing to finish
                await _refuse(protocol)
        deadline = time.monotonic() + grace_seconds
        while sessions.live and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for protocol in list(sessions.live):
            log.warning("closing an SMTP session still open after %.0fs of stopping", grace_seconds)
            await _refuse(protocol)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.acceptance().accepts(address):
            self.stats.refused_recipients += 1
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def envelope_of(self, session: Any, envelope: Any) -> Envelope:
        """The spool envelope of the transaction in progress."""
        return Envelope(
            channel=self.channel,
            received_at=business_clock.now(),
            mail_from=envelope.mail_from or "",
            recipients=tuple(a.lower() for a in envelope.rcpt_tos),
            peer=str(session.peer[0]) if session.peer else None,
            meta=(("helo", str(session.host_name or "")[:255]),),
        )

    async def handle_body(self, session: Any, envelope: Any, body: Body) -> str:
        """DATA is complete (channels/smtp_data.py): spool it, and only then say 250."""
        reply = await self._spool(body, self.envelope_of(session, envelope))
        if self.lmtp:
            # LMTP (RFC 2033 4.2): one reply per accepted recipient, in order.
            return "\r\n".join(reply for _ in envelope.rcpt_tos)
        return reply

    async def _spool(self, body: Body, env: Envelope) -> str:
        try:
            if body.error is not None:
                raise body.error  # the spool refused the streamed message part way
            if body.stream is not None:
                entry_id = await self.spool.enqueue_stream_async(body.stream, env)
            else:
                entry_id = await self.spool.enqueue_async(body.raw, env)
        except SpoolFullError as exc:
            self.stats.temp_failures += 1
            self.stats.last_error = f"spool full: {exc}"
            log.error("spool full, answering 452: %s", exc)
            return "452 4.3.1 Insufficient system storage; try again later"
        except Exception as exc:  # any other failure to make it durable is ours: temporary
            self.stats.temp_failures += 1
            self.stats.last_error = f"spool write failed: {exc}"
            log.error("spool write failed, answering 451: %s", exc)
            return "451 4.3.0 Temporary local problem; try again later"
        crash_point("after-spool-before-ack")
        self.stats.accepted += 1
        return f"250 2.0.0 Queued as {entry_id}"

    async def handle_exception(self, error: Exception) -> str:
        # Never a 5xx for our own bug: the sender must retry, not bounce the customer's mail.
        log.exception("SMTP session error", exc_info=error)
        self.stats.last_error = f"{type(error).__name__}: {error}"
        return "451 4.3.0 Temporary local problem; try again later"


@dataclass(frozen=True)
class ListenerConfig:
    host: str
    port: int
    lmtp: bool
    max_sessions: int
    timeout_seconds: int
    max_message_bytes: int
    hostname: str


@dataclass
class _Sessions:
    """The listener's live sessions: counted for the cap, listed for a graceful stop."""

    active: int = 0
    live: set[Any] = field(default_factory=set)
    shutting_down: bool = False


SHUTTING_DOWN = "421 4.3.2 Service shutting down"


async def _refuse(protocol: Any) -> None:
    """Answer 421 (unsolicited, as RFC 5321 3.8 allows when shutting down) and close."""
    transport = protocol.transport
    if transport is None or transport.is_closing():
        return
    try:
        transport.write(SHUTTING_DOWN.encode() + b"\r\n")
    finally:
        transport.close()


# RFC 5321's usual path, "<local@domain>" with dot-atom parts, then its parameters.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)>[ \t]*")


def plain_path(arg: str) -> tuple[str, str] | None:
    """aiosmtpd's `_getaddr` answer for the path nearly every client sends, "<local@domain>"
    (dot-atoms) and its parameters; None for anything else, which goes to aiosmtpd's parser.

    aiosmtpd parses every MAIL FROM and RCPT TO with the email package's RFC 5322 header parser,
    which builds a token tree for each: a fifth of the SMTP listener's event-loop time at 20
    sessions (py-spy, issue 20 outcome 2), for the one shape that a regular expression reads
    exactly. `tests/test_smtp_plain_path.py` checks it against aiosmtpd's own `_getaddr`.
    """
    match = _PLAIN_PATH.match(arg)
    if match is None:
        return None
    rest = arg[match.end():]
    if rest[:1] in ("(", "\r", "\n"):  # a comment or a folded line: the parser's business
        return None
    return match.group(1), rest


def _capped(base: type[SMTP], count: _Sessions, limit: int, stats: ChannelStats) -> type[SMTP]:
    """aiosmtpd has no session cap; a thin subclass answers 421 past `limit` and closes. It
    also answers 421 to every command outside a transaction once the listener is stopping."""

    class Capped(base):  # type: ignore[valid-type,misc]
        _served = False

        async def smtp_DATA(self, arg: str) -> None:
            # Streamed to the spool instead of held whole (channels/smtp_data.py, issue 20).
            await smtp_data(self, self.event_handler, arg)

        def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
            plain = plain_path(arg)
            if plain is not None:
                address, rest = plain
                limit = self.local_part_limit
                if limit and len(address.rpartition("@")[0]) > limit:
                    return None, None  # aiosmtpd's own check, as it makes it
                return address, rest
            # aiosmtpd 1.4 lets the email package's address parser raise IndexError on a few
            # truncated addresses ("<", "<@", "a@", a lone quote) and answers them "500 Error:
            # (IndexError) ..."; they are malformed addresses and get aiosmtpd's own answer
            # for one, 553 5.1.3.
            try:
                address, params = super()._getaddr(arg)
            except (IndexError, ValueError):
                return None, None
            return address, params

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            count.active += 1
            stats.sessions = count.active
            if count.active > limit or count.shutting_down:
                reply = (
                    SHUTTING_DOWN
                    if count.shutting_down
                    else ("421 4.7.0 Too many connections; try again later")
                )
                transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self._served = True
            count.live.add(self)
            super().connection_made(transport)
            for name, method in list(self._smtp_methods.items()):
                self._smtp_methods[name] = self._stop_guard(name, method)

        def _stop_guard(
            self, name: str, method: Callable[[str | None], Awaitable[None]]
        ) -> Callable[[str | None], Awaitable[None]]:
            @functools.wraps(method)
            async def guarded(arg: str | None) -> None:
                # A transaction in progress (MAIL given) may finish; nothing new may start.
                if count.shutting_down and name != "QUIT" and self.envelope.mail_from is None:
                    await _refuse(self)
                    return
                await method(arg)

            return guarded

        def connection_lost(self, error: Exception | None) -> None:
            count.active -= 1
            stats.sessions = count.active
            count.live.discard(self)
            if self._served:
                super().connection_lost(error)

    return Capped


async def start_listener(handler: IntakeHandler, cfg: ListenerConfig) -> asyncio.Server:
    """Bind and serve in the running loop. Returns the server (its sockets give the real port)."""
    protocol = _capped(
        LMTP if cfg.lmtp else SMTP, handler.sessions, cfg.max_sessions, handler.stats
    )

    def factory() -> SMTP:
        return protocol(
            handler,
            data_size_limit=cfg.max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=cfg.hostname,
            timeout=cfg.timeout_seconds,
            # decode_data=False keeps the original bytes: we spool exactly what was sent.
            decode_data=False,
            ident="Intake Gateway",
        )

    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host=cfg.host, port=cfg.port, reuse_address=True)
