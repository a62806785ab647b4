"""SMTP DATA read line by line into a bounded buffer, and streamed to a spool file past it.

aiosmtpd's own `smtp_DATA` keeps every line of the message as a separate bytearray and joins
them at the end: a 34 MiB DATA cost the listener 133 MB at peak (issue 20 outcome 5). Here a
message up to `SPILL_BYTES` is gathered in one buffer and spooled as bytes (the common case:
its write joins the spool's fsync groups unchanged); past that, the buffer is written to a
`SpoolStream` in the spool's tmp/ directory whenever it reaches `SPILL_BYTES`, from a thread, so
the listener holds at most about two buffers per session whatever the message's size.

The protocol is aiosmtpd 1.4's, kept line for line (RFC 5321 4.5.2 dot-unstuffing, 552 past
`data_size_limit`, 500 for a line over 1,000 characters, both answered only after the final
dot): only where the bytes go changed. The durability promise is unchanged: the reply comes
from the handler, after the spool returned (fsync of the file and of incoming/). Never parses
the message, never touches the database.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING, Any, Protocol

from gateway.intake.spool import Envelope, Spool, SpoolError, SpoolStream

if TYPE_CHECKING:
    from collections.abc import Callable

# Past this a message is written to its spool file as it arrives, this much at a time. Most
# support mail is smaller and never touches a stream. 256 KiB rather than 1 MiB: with ten 25 MiB
# mails at once the listener's peak rose 7 MB instead of 16, and it kept 6 MB afterwards
# instead of 14 (bench/smtp_memory.py; larger blocks stay in glibc's per-thread arenas).
SPILL_BYTES = 256 * 1024


class _State(enum.Enum):
    NOMINAL = enum.auto()
    TOO_LONG = enum.auto()
    TOO_MUCH = enum.auto()


class Body:
    """What DATA delivered: the bytes in memory, or a spool stream holding all of them, or the
    spool's refusal (the reply is then 451/452, after the final dot like any other reply)."""

    def __init__(self, spool: Spool, envelope: Callable[[], Envelope]) -> None:
        self._spool = spool
        self._envelope = envelope
        self._buffer = bytearray()
        self.stream: SpoolStream | None = None
        self.error: SpoolError | None = None

    @property
    def raw(self) -> bytes:
        return bytes(self._buffer)

    def add(self, line: bytes) -> bool:
        """Keep a line; True when the buffer is full and `spill` is due (a plain call, not a
        coroutine: it runs for every line of every message)."""
        if self.error is not None:
            return False  # the spool refused: read on to the dot, keep nothing
        self._buffer += line
        return len(self._buffer) >= SPILL_BYTES

    async def close(self) -> None:
        """Write what is buffered, if the message is streaming."""
        if self.stream is not None and self._buffer and self.error is None:
            await self.spill()

    async def discard(self) -> None:
        self._buffer = bytearray()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await asyncio.to_thread(stream.abort)

    async def spill(self) -> None:
        """Write the buffer to the message's spool file (opened on the first spill)."""
        chunk, self._buffer = self._buffer, bytearray()
        try:
            if self.stream is None:
                self.stream = await asyncio.to_thread(self._spool.open_stream, self._envelope())
            await asyncio.to_thread(self.stream.write, chunk)
        except SpoolError as exc:
            self.error = exc
            await self.discard()


class StreamedDataHandler(Protocol):
    spool: Spool

    def envelope_of(self, session: Any, envelope: Any) -> Envelope: ...

    async def handle_body(self, session: Any, envelope: Any, body: Body) -> str: ...


async def smtp_data(protocol: Any, handler: StreamedDataHandler, arg: str) -> None:
    """aiosmtpd's `SMTP.smtp_DATA`, the message streamed (see the module docstring)."""
    if await protocol.check_helo_needed():
        return
    if await protocol.check_auth_needed("DATA"):
        return
    if not protocol.envelope.rcpt_tos:
        await protocol.push("503 Error: need RCPT command")
        return
    if arg:
        await protocol.push("501 Syntax: DATA")
        return
    await protocol.push("354 End data with <CR><LF>.<CR><LF>")
    session, envelope = protocol.session, protocol.envelope
    body = Body(handler.spool, lambda: handler.envelope_of(session, envelope))
    try:
        state = await _read_lines(protocol, body)
        if state is _State.NOMINAL:
            # The last spill, still ours to discard: once handle_body hands the stream to the
            # spool's writer (no await before that), the writer owns it.
            await body.close()
    except BaseException:
        await asyncio.shield(body.discard())  # the connection went: nothing was acknowledged
        raise
    if state is not _State.NOMINAL:
        await body.discard()
        if state is _State.TOO_LONG:
            await protocol.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        else:
            await protocol.push("552 Error: Too much mail data")
        protocol._set_post_data_state()
        return
    status = await handler.handle_body(session, envelope, body)
    protocol._set_post_data_state()
    await protocol.push(status)


async def _read_lines(protocol: Any, body: Body) -> _State:
    reader: asyncio.StreamReader = protocol._reader
    limit: int | None = protocol.data_size_limit
    num_bytes = 0
    fragments: list[bytes] = []
    state = _State.NOMINAL
    while protocol.transport is not None:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.CancelledError:
            protocol._writer.close()
            raise
        except asyncio.LimitOverrunError as exc:
            # Longer than the reader's limit (1,001): drain it, answer 500 after the dot.
            if state is _State.NOMINAL:
                state = _State.TOO_LONG
                await body.discard()
            line = await reader.read(exc.consumed)
        if not fragments and line == b".\r\n":
            break
        num_bytes += len(line)
        if state is _State.NOMINAL and limit and num_bytes > limit:
            state = _State.TOO_MUCH  # 552 after the dot (RFC 5321 4.2.5); keep nothing
            await body.discard()
        fragments.append(line)
        if line.endswith(b"\r\n"):
            if state is _State.NOMINAL:
                whole = b"".join(fragments) if len(fragments) > 1 else line
                if len(whole) > protocol.line_length_limit:
                    state = _State.TOO_LONG
                    await body.discard()
                else:
                    # RFC 5321 4.5.2: a leading dot was doubled by the client.
                    if body.add(whole[1:] if whole.startswith(b".") else whole):
                        await body.spill()
            fragments.clear()
    return state
