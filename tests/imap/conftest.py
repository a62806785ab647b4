"""A real, throwaway Dovecot for the IMAP channel's tests, and pollers built against it.

One Dovecot per test session (tests/imap/dovecot.py starts it): plaintext IMAP on 127.0.0.1,
and, when a test asks for it, a second instance offering STARTTLS and implicit TLS. Each test
uses its own user, i.e. its own empty maildir; a test that stops the server starts its own.
Without Dovecot the tests skip, under CI=true they fail (`.ci/test` installs dovecot-imapd).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from channels.imap import MailboxPoller, PollerThread
from gateway.config.gateway_schema import ImapMailbox
from gateway.intake.spool import Spool
from gateway.storage.channel_state import ChannelStateStore
from tests.imap.dovecot import PASSWORD, Dovecot, DovecotUnavailableError, start_dovecot

RECIPIENT = "support@example.com"


def start_or_skip(with_tls: bool = False) -> Dovecot:
    """A running Dovecot; without one the test skips, under CI=true it fails."""
    try:
        return start_dovecot(with_tls=with_tls)
    except DovecotUnavailableError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (required under CI=true; .ci/test installs dovecot-imapd)")
        pytest.skip(f"{exc} (skipped outside CI)")


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    server = start_or_skip(with_tls=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dovecot_tls() -> Iterator[Dovecot]:
    server = start_or_skip(with_tls=True)
    yield server
    server.stop()


@pytest.fixture
def user() -> str:
    """A fresh mailbox owner: its own, empty maildir on the shared Dovecot."""
    return f"u{uuid.uuid4().hex[:10]}"


def mailbox(server: Dovecot, user: str, **overrides: Any) -> ImapMailbox:
    box = ImapMailbox(
        name="support",
        host="127.0.0.1",
        username=user,
        port=server.port,
        tls="plain",
        allow_plaintext=True,
        poll_seconds=0.5,
        recipients=(RECIPIENT,),
    )
    return replace(box, **overrides)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", fsync=False, min_free_bytes=0)
    yield s
    s.close()


@pytest.fixture
def make_poller(dovecot: Dovecot, user: str, spool: Spool) -> Callable[..., MailboxPoller]:
    """A poller for this test's mailbox; keyword arguments override ImapMailbox fields, or
    (spool, store, password, fault, max_message_bytes, server) the poller's own."""

    def factory(
        *,
        spool: Spool = spool,
        store: ChannelStateStore | None = None,
        password: str | None = PASSWORD,
        fault: Any = None,
        max_message_bytes: int = 10_000_000,
        server: Dovecot = dovecot,
        **overrides: Any,
    ) -> MailboxPoller:
        return MailboxPoller(
            mailbox(server, overrides.pop("username", user), **overrides),
            spool,
            password=password,
            max_message_bytes=max_message_bytes,
            store=store,
            backoff_base=0.05,
            backoff_cap=0.5,
            fault=fault,
        )

    return factory


@pytest.fixture
def run_poller() -> Iterator[Callable[[MailboxPoller], PollerThread]]:
    """Run pollers in their threads for the test; stop and join them afterwards."""
    stop = threading.Event()
    threads: list[PollerThread] = []

    def start(poller: MailboxPoller) -> PollerThread:
        thread = PollerThread(poller, stop)
        thread.start()
        threads.append(thread)
        return thread

    yield start
    stop.set()
    for thread in threads:
        thread.join(15)
        assert not thread.is_alive(), f"{thread.name} did not stop"
