"""SMTP abuse against the real daemon over real TCP, with a small session cap and idle timeout
(so it runs fast): open-relay tricks, recipients outside our domains, pipelined command floods and
smuggled second messages, lines over 998 characters, slow-loris clients. The promise: nothing is
ever spooled for an address we do not serve, every abuse gets a clear SMTP answer, and the cap
and the timeout hold — while ordinary mail still gets through afterwards."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import DaemonProcess, make_email, wait_for
from tests.hostile.kit import endings, spool_id_of

MAX_SESSIONS = 4
TIMEOUT_SECONDS = 2


@pytest.fixture(scope="module")
def daemon(start_daemon: Callable[..., DaemonProcess]) -> Iterator[DaemonProcess]:
    yield start_daemon(
        smtp__max_sessions=MAX_SESSIONS,
        smtp__timeout_seconds=TIMEOUT_SECONDS,
        smtp__recipients=["support@example.com"],
        smtp__domains=["help.example"],
        webhooks__enabled=False,
    )


def accepted(daemon: DaemonProcess) -> int:
    return int(daemon.status()["channels"]["smtp"]["accepted"])


def settled_accepted(daemon: DaemonProcess) -> int:
    """The accepted counter once the status file (written every second) has caught up."""
    first = accepted(daemon)
    time.sleep(1.2)
    return max(first, accepted(daemon))


def connect(daemon: DaemonProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.smtp_port), timeout=30)
    return sock


def read_replies(sock: socket.socket, count: int) -> list[str]:
    """Read until `count` final reply lines (those with a space after the code) arrived."""
    buf = b""
    while True:
        lines = buf.decode(errors="replace").split("\r\n")
        finals = [line for line in lines[:-1] if len(line) >= 4 and line[3] == " "]
        if len(finals) >= count:
            return finals
        chunk = sock.recv(65536)
        if not chunk:
            return finals
        buf += chunk


def codes(replies: list[str]) -> list[int]:
    return [int(line[:3]) for line in replies]


def test_open_relay_attempts_are_refused_and_nothing_is_spooled(daemon: DaemonProcess) -> None:
    before = settled_accepted(daemon)
    attempts = [
        "<victim@elsewhere.example>",
        "<VICTIM@ELSEWHERE.EXAMPLE>",
        "<@help.example:victim@elsewhere.example>",  # source route through our domain
        '<"support@example.com"@elsewhere.example>',
        "<support@example.com@elsewhere.example>",
        "<support@example.com.elsewhere.example>",
        "<support@help.example.elsewhere.example>",
        "<victim@[127.0.0.1]>",
        "<postmaster@elsewhere.example>",
        "<victim@elsewhere.example> NOTIFY=NEVER",
    ]
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo("relay-test.example")
        assert client.mail("spammer@elsewhere.example")[0] == 250
        for rcpt in attempts:
            code, text = client.docmd("RCPT", f"TO:{rcpt}")
            assert 500 <= code < 600, (rcpt, code, text)
        # With no recipient accepted there is no transaction to send data for.
        code, _ = client.docmd("DATA")
        assert code == 503
        client.rset()
    assert settled_accepted(daemon) == before


def test_a_message_for_one_served_and_one_foreign_recipient_is_kept_for_ours_only(
    daemon: DaemonProcess,
) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo("mixed.example")
        client.mail("dana@acme-clinic.example")
        assert client.rcpt("victim@elsewhere.example")[0] == 550
        assert client.rcpt("Someone@Help.Example")[0] == 250
        code, reply = client.data(make_email(message_id="<mixed@acme-clinic.example>"))
    assert code == 250
    spool_id = spool_id_of(reply.decode())
    settings_db = f"sqlite:///{daemon.state / 'gateway.db'}"
    ending = wait_for(lambda: endings(settings_db, daemon.state / "spool").get(spool_id))
    assert ending.outcome == "ticket", ending
    from sqlalchemy import create_engine, text

    engine = create_engine(settings_db)
    try:
        with engine.connect() as conn:
            recipients = conn.execute(
                text(
                    "SELECT m.recipients FROM messages m JOIN intakes i ON i.message_id = m.id "
                    "WHERE i.spool_id = :id"
                ),
                {"id": spool_id},
            ).scalar_one()
    finally:
        engine.dispose()
    assert recipients == "someone@help.example"


SMUGGLED = b"MAIL FROM:<evil@elsewhere.example>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n"


TERMINATORS = (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n")


def test_a_bare_lf_or_cr_dot_never_ends_data_so_no_second_message_is_smuggled(
    daemon: DaemonProcess,
) -> None:
    """SMTP smuggling (CVE-2023-51766 and kin): only CRLF.CRLF ends the data."""
    before = settled_accepted(daemon)
    for terminator in TERMINATORS:
        body = (
            b"From: dana@acme-clinic.example\r\nTo: support@example.com\r\nSubject: carrier\r\n"
            b"Message-ID: <carrier-"
            + terminator.hex().encode()
            + b"@x>\r\n\r\nfirst"
            + terminator
            + SMUGGLED
            + b"From: evil@elsewhere.example\r\nSubject: smuggled\r\n\r\nsecond\r\n"
        )
        sock = connect(daemon)
        try:
            read_replies(sock, 1)
            sock.sendall(b"EHLO smuggler.example\r\nMAIL FROM:<dana@acme-clinic.example>\r\n")
            sock.sendall(b"RCPT TO:<support@example.com>\r\nDATA\r\n")
            assert codes(read_replies(sock, 4)) == [250, 250, 250, 354]
            sock.sendall(body + b".\r\nQUIT\r\n")
            replies = read_replies(sock, 2)
        finally:
            sock.close()
        assert codes(replies) == [250, 221], (terminator, replies)
    # One message per carrier, never a second one smuggled inside it.
    assert wait_for(
        lambda: settled_accepted(daemon) - before == len(TERMINATORS) or None, timeout=10
    )


def test_a_pipelined_flood_gets_one_answer_per_command_in_order(daemon: DaemonProcess) -> None:
    before = settled_accepted(daemon)
    message = make_email(message_id="<pipelined@acme-clinic.example>").replace(b"\n", b"\r\n")
    flood = (
        b"EHLO flood.example\r\n"
        + b"NOOP\r\n" * 15
        + b"MAIL FROM:<dana@acme-clinic.example>\r\n"
        + b"RCPT TO:<victim@elsewhere.example>\r\n"
        + b"RCPT TO:<support@example.com>\r\n"
        + b"DATA\r\n"
        + message
        + b".\r\n"
        + b"MAIL FROM:<dana@acme-clinic.example>\r\nDATA\r\n"  # DATA without RCPT
        + b"RSET\r\nQUIT\r\n"
    )
    sock = connect(daemon)
    try:
        read_replies(sock, 1)
        sock.sendall(flood)  # all at once, without waiting for a single reply
        replies = read_replies(sock, 1 + 15 + 4 + 1 + 2 + 2)
    finally:
        sock.close()
    assert codes(replies) == [250] + [250] * 15 + [250, 550, 250, 354, 250, 250, 503, 250, 221]
    assert wait_for(lambda: settled_accepted(daemon) - before == 1 or None, timeout=10)


@pytest.mark.parametrize("address", ["<", "<@", "a@", '"', '<"'])
def test_a_truncated_address_is_refused_as_malformed_and_the_session_goes_on(
    daemon: DaemonProcess, address: str
) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo("truncated.example")
        assert client.docmd("MAIL", f"FROM:{address}") == (553, b"5.1.3 Error: malformed address")
        assert client.mail("dana@acme-clinic.example")[0] == 250
        assert client.docmd("RCPT", f"TO:{address}") == (553, b"5.1.3 Error: malformed address")
        assert client.rcpt("support@example.com")[0] == 250


def test_lines_over_the_limit_get_500_and_the_session_goes_on(daemon: DaemonProcess) -> None:
    before = settled_accepted(daemon)
    long_line = b"X-Long: " + b"y" * 5000 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo("long.example")
        code, text = client.docmd("MAIL", "FROM:<" + "a" * 5000 + "@elsewhere.example>")
        assert code == 500, text
        assert client.noop()[0] == 250
        client.mail("dana@acme-clinic.example")
        client.rcpt("support@example.com")
        raw = make_email(message_id="<longline@acme-clinic.example>").replace(
            b"Subject:", long_line + b"Subject:", 1
        )
        code, text = client.data(raw)
        assert code == 500 and b"Line too long" in text  # RFC 5321 4.5.3.1.6: a clear refusal
        assert client.noop()[0] == 250
        # The same session then delivers an ordinary message.
        assert (
            client.sendmail(
                "dana@acme-clinic.example",
                ["support@example.com"],
                make_email(message_id="<after-long@acme-clinic.example>"),
            )
            == {}
        )
    assert wait_for(lambda: settled_accepted(daemon) - before == 1 or None, timeout=10)


def test_slow_loris_clients_are_cut_by_the_timeout_and_held_to_the_session_cap(
    daemon: DaemonProcess,
) -> None:
    idle = [connect(daemon) for _ in range(MAX_SESSIONS)]
    try:
        for sock in idle:
            assert read_replies(sock, 1)[0].startswith("220")
        # Beyond the cap: 421 at once, and closed.
        for _ in range(3):
            extra = connect(daemon)
            try:
                reply = read_replies(extra, 1)
                assert reply and reply[0].startswith("421"), reply
                assert extra.recv(100) == b""
            finally:
                extra.close()
        # Idle sessions are closed by the server after the timeout; the cap frees up.
        for sock in idle:
            sock.settimeout(TIMEOUT_SECONDS * 15)
            assert sock.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        assert client.noop()[0] == 250


def test_a_client_dribbling_one_byte_at_a_time_is_cut_before_its_command_ends(
    daemon: DaemonProcess,
) -> None:
    """The timer restarts only on a complete command: a partial line never keeps a session."""
    sock = connect(daemon)
    try:
        read_replies(sock, 1)
        sock.settimeout(0.5)
        dribble = b"HELO " + b"s" * 60  # 60 bytes over ~15 idle timeouts, no line end
        closed = False
        for byte in dribble:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset by the server: closed as well
                closed = True
                break
        assert closed, "the server kept a session whose client never finished a command"
    finally:
        sock.close()
