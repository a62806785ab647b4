"""The SMTP channel's contract, over real TCP with smtplib: 250 only after the spool has the
message, 550 for strangers' recipients, 552 for oversize, 4xx for our own faults."""

from __future__ import annotations

import asyncio
import errno
import smtplib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from channels.smtp import Acceptance, IntakeHandler, ListenerConfig, start_listener
from gateway.intake.spool import Spool
from tests.helpers import CapturingRelay, DaemonProcess, make_email, wait_for


class Listener:
    """The SMTP listener in a background event loop, over a spool we control."""

    def __init__(self, spool: Spool, max_bytes: int = 1_000_000, lmtp: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.handler = IntakeHandler(
            spool,
            lambda: Acceptance(frozenset({"support@example.com"}), frozenset({"help.example"})),
            lmtp=lmtp,
        )
        cfg = ListenerConfig("127.0.0.1", 0, lmtp, 3, 30, max_bytes, "test.example")
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            start_listener(self.handler, cfg), self.loop
        ).result(10)
        self.port: int = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def listener_factory(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    made: list[tuple[Listener, Spool]] = []

    def factory(write_fault: Callable[[], None] | None = None, **kw: object) -> Listener:
        spool = Spool(tmp_path / f"spool{len(made)}", write_fault=write_fault)
        listener = Listener(spool, **kw)  # type: ignore[arg-type]
        made.append((listener, spool))
        return listener

    yield factory
    for listener, spool in made:
        listener.close()
        spool.close()


def send(port: int, raw: bytes, to: str = "support@example.com") -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("customer@client.example", [to], raw)


def test_250_comes_only_after_the_message_is_in_the_spool(
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory()
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as client:
        client.ehlo()
        client.mail("customer@client.example")
        client.rcpt("support@example.com")
        code, reply = client.data(make_email())
    assert code == 250
    entry_id = reply.decode().rsplit(" ", 1)[1]
    spool = listener.handler.spool
    entry = spool.get(entry_id)
    assert entry is not None, "the 250 named an entry that is not durable in the spool"
    # smtplib sends CRLF line endings and ends the data with one; the content is otherwise ours.
    received = spool.read_raw(entry).replace(b"\r\n", b"\n").rstrip()
    assert received == make_email().replace(b"\r\n", b"\n").rstrip()
    assert entry.envelope.recipients == ("support@example.com",)


def test_recipients_we_do_not_serve_get_550_and_we_are_never_an_open_relay(
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(listener.port, make_email(), to="victim@elsewhere.example")
    code, text = refused.value.recipients["victim@elsewhere.example"]
    assert code == 550 and text.startswith(b"5.1.1")
    # A whole served domain is accepted.
    assert send(listener.port, make_email(), to="anyone@help.example") == {}
    assert listener.handler.spool.depth() == 1


def test_a_message_over_the_size_limit_gets_552(listener_factory: Callable[..., Listener]) -> None:
    listener = listener_factory(max_bytes=10_000)
    with pytest.raises(smtplib.SMTPResponseException) as exc:
        send(listener.port, make_email(body="x" * 20_000))
    assert exc.value.smtp_code == 552
    assert listener.handler.spool.depth() == 0


def _fault(err: int) -> Callable[[], None]:
    def fail() -> None:
        raise OSError(err, "injected")

    return fail


def test_a_full_spool_answers_452_and_nothing_is_queued(
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory(write_fault=_fault(errno.ENOSPC))
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(listener.port, make_email())
    assert exc.value.smtp_code == 452
    assert listener.handler.spool.depth() == 0


def test_an_unwritable_spool_answers_451_and_nothing_half_written_is_processed(
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory(write_fault=_fault(errno.EIO))
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(listener.port, make_email())
    assert exc.value.smtp_code == 451
    spool = listener.handler.spool
    assert spool.claim() is None
    assert spool.depth() == 0


def test_intake_recovers_when_the_spool_is_writable_again(
    listener_factory: Callable[..., Listener],
) -> None:
    broken = {"on": True}

    def fault() -> None:
        if broken["on"]:
            raise OSError(errno.ENOSPC, "disk full")

    listener = listener_factory(write_fault=fault)
    with pytest.raises(smtplib.SMTPDataError):
        send(listener.port, make_email())
    broken["on"] = False
    assert send(listener.port, make_email()) == {}
    assert listener.handler.spool.depth() == 1


def test_sessions_over_the_cap_get_421(listener_factory: Callable[..., Listener]) -> None:
    listener = listener_factory()
    clients = [smtplib.SMTP("127.0.0.1", listener.port, timeout=10) for _ in range(3)]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as exc:
            smtplib.SMTP("127.0.0.1", listener.port, timeout=10)
        assert exc.value.smtp_code == 421
    finally:
        for c in clients:
            c.quit()


def test_lmtp_mode_answers_once_per_recipient(listener_factory: Callable[..., Listener]) -> None:
    listener = listener_factory(lmtp=True)
    client = smtplib.LMTP("127.0.0.1", listener.port)
    try:
        refused = client.sendmail(
            "c@client.example", ["support@example.com", "x@help.example"], make_email()
        )
    finally:
        client.quit()
    assert refused == {}
    assert listener.handler.spool.depth() == 1


# ---- the real daemon -------------------------------------------------------------------------


@pytest.fixture
def daemon(make_config: Callable[..., Path], relay: CapturingRelay) -> Iterator[DaemonProcess]:
    config = make_config(outbound__enabled=True, outbound__relay_port=relay.port)
    d = DaemonProcess(config).start()
    yield d
    d.stop()


def ticket_count(d: DaemonProcess) -> int:
    import json

    from tests.helpers import gateway_cli

    out = gateway_cli(d.config, "tickets", "--json", "--all")
    assert out.returncode == 0, out.stderr
    return len(json.loads(out.stdout))


def test_an_email_over_smtp_becomes_one_ticket_and_one_acknowledgement(
    daemon: DaemonProcess, relay: CapturingRelay
) -> None:
    raw = make_email(subject="Lab orders failing", body="Lab ordering fails at random.")
    assert daemon.send(raw, sender="dana@acme-clinic.example") == {}
    wait_for(lambda: ticket_count(daemon) == 1)
    wait_for(lambda: len(relay.messages) == 1, timeout=30)
    ack = relay.messages[0]
    assert b"Auto-Submitted: auto-replied" in ack
    assert b"[#T-000001]" in ack
    assert relay.recipients[0] == ["dana@acme-clinic.example"]
    # The same message again over SMTP: still one ticket, and no second acknowledgement.
    assert daemon.send(raw) == {}
    wait_for(lambda: daemon.status()["spool_depth"] == 0)
    import time

    time.sleep(1.5)
    assert ticket_count(daemon) == 1
    assert len(relay.messages) == 1


# ---- DATA streamed to the spool (issue 20 outcome 5) ------------------------------------------


def big_message(mib: int) -> bytes:
    """A CRLF message of about `mib` MiB: base64-like lines, and lines that start with a dot
    (the client doubles them, RFC 5321 4.5.2; the spool must hold them single again)."""
    head = (
        b"From: dana@acme-clinic.example\r\nTo: support@example.com\r\n"
        b"Subject: the logs you asked for\r\nMessage-ID: <big@acme-clinic.example>\r\n\r\n"
    )
    lines = []
    for n in range(mib * 1024 * 1024 // 78):
        lines.append(b".dot line %d\r\n" % n if n % 997 == 0 else (b"%08d" % n) * 9 + b"QUJD\r\n")
    return head + b"".join(lines)


def counting_open_stream(spool: Spool) -> list[int]:
    """Count the spool files DATA was streamed into (the test fails if DATA was held whole)."""
    opened: list[int] = []
    real = spool.open_stream

    def counted(envelope: object) -> object:
        opened.append(1)
        return real(envelope)  # type: ignore[arg-type]

    spool.open_stream = counted  # type: ignore[method-assign,assignment]
    return opened


def tmp_files(spool: Spool) -> list[Path]:
    return list(spool.tmp_dir.iterdir())


def test_a_large_message_streams_into_its_spool_file_and_arrives_byte_identical(
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory(max_bytes=16 * 1024 * 1024)
    spool = listener.handler.spool
    opened = counting_open_stream(spool)
    raw = big_message(5)
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client:
        client.ehlo()
        client.mail("customer@client.example")
        client.rcpt("support@example.com")
        code, reply = client.data(raw)
    assert code == 250, reply
    assert opened == [1]
    entry = spool.get(reply.decode().rsplit(" ", 1)[1])
    assert entry is not None, "the 250 named an entry that is not durable in the spool"
    assert spool.read_raw(entry) == raw  # byte for byte, dots single again
    assert entry.size == len(raw)
    assert entry.envelope.recipients == ("support@example.com",)
    assert entry.envelope.mail_from == "customer@client.example"
    assert tmp_files(spool) == []
    # A small message on the same session path is still spooled from memory.
    assert send(listener.port, make_email()) == {}
    assert opened == [1] and spool.depth() == 2


def test_a_streamed_message_over_the_size_limit_gets_552_and_leaves_no_file(
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory(max_bytes=3 * 1024 * 1024)
    spool = listener.handler.spool
    opened = counting_open_stream(spool)
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client:
        client.ehlo()
        client.mail("customer@client.example")  # no SIZE= declared: the limit bites in DATA
        client.rcpt("support@example.com")
        code, _ = client.data(big_message(5))
    assert code == 552
    assert opened == [1]  # it had started streaming before the limit was crossed
    assert spool.depth() == 0 and tmp_files(spool) == []
    assert send(listener.port, make_email()) == {}  # the session state is clean for the next


def test_a_spool_that_fills_up_mid_stream_answers_452_after_the_dot_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool", high_water_bytes=2 * 1024 * 1024)
    listener = Listener(spool, max_bytes=16 * 1024 * 1024)
    try:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            send(listener.port, big_message(5))
        assert exc.value.smtp_code == 452
        assert spool.depth() == 0 and tmp_files(spool) == []
        assert send(listener.port, make_email()) == {}  # room again once the stream is gone
    finally:
        listener.close()
        spool.close()
