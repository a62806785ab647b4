"""The IMAP channel's contract, against a real Dovecot over TCP: the server is told (move/flag)
only after the spool has the message, a full spool leaves mail unseen in place, a poison message
goes to Quarantine without blocking the rest, and a message seen twice is still one ticket."""

from __future__ import annotations

import errno
import json
import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from channels.imap import MailboxPoller, PollerThread, StartTlsRequiredError
from gateway.config.errors import ConfigError
from gateway.config.loader import load
from gateway.intake.spool import Spool
from gateway.storage.channel_state import ChannelStateStore
from gateway.storage.db import make_engine, upgrade
from tests.helpers import ROOT, DaemonProcess, Gateway, configure, gateway_cli, make_email, wait_for
from tests.imap.conftest import RECIPIENT, start_or_skip
from tests.imap.dovecot import PASSWORD, Dovecot

Poller = Callable[..., MailboxPoller]
# The daemon's HTTP listeners (Twilio webhooks, health/metrics) default to the fixed port 8080,
# which a daemon of another test run may hold; these tests do not need them.
NO_WEBHOOKS: dict[str, object] = {"webhooks__enabled": False, "api__enabled": False}
Run = Callable[[MailboxPoller], PollerThread]


def spooled(spool: Spool) -> list[tuple[Any, bytes]]:
    """(envelope, raw) of every entry waiting in the spool, oldest first."""
    out = []
    for path in sorted(spool.incoming_dir.glob("*.msg")):
        header, _, raw = path.read_bytes().partition(b"\n")
        out.append((json.loads(header)["envelope"], raw))
    return out


def mail(n: int, **kw: Any) -> bytes:
    """A message as an IMAP server stores it (RFC 5322 CRLF line endings)."""
    raw = make_email(subject=f"Printer {n} offline", message_id=f"<m{n}@acme.example>", **kw)
    return raw.replace(b"\n", b"\r\n")


# ---------------------------------------------------------------------------- the happy path


def test_mail_in_inbox_becomes_one_spool_entry_and_moves_to_processed_only_after(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool
) -> None:
    raw = mail(1)
    dovecot.append(user, raw)
    seen_at_ack: list[int] = []

    def fault(step: str, uid: int) -> None:
        if step == "ack":  # the server is about to be told: the spool must have it already
            seen_at_ack.append(len(spooled(spool)))
            assert dovecot.folder(user, "INBOX"), "moved before the spool write returned"

    poller = make_poller(fault=fault)
    poller.poll_once()

    assert seen_at_ack == [1]
    ((envelope, body),) = spooled(spool)
    assert body == raw  # the exact bytes: the dedup key depends on them
    assert envelope["channel"] == "imap"
    assert envelope["mail_from"] is None
    assert envelope["recipients"] == [RECIPIENT]
    assert envelope["peer"] == "imap:support"
    meta = dict(envelope["meta"])
    assert meta["imap_uid"] == "1" and meta["imap_mailbox"] == "support" and meta["uidvalidity"]
    assert dovecot.folder(user, "INBOX") == {}
    assert [m[0] for m in dovecot.folder(user, "Processed").values()] == [raw]
    assert poller.stats.accepted == 1 and poller.stats.acknowledged == 1


def test_flag_mode_sets_seen_and_leaves_the_message_in_place(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool
) -> None:
    dovecot.append(user, mail(1))
    make_poller(after_intake="flag").poll_once()
    ((_raw, flags),) = dovecot.folder(user, "INBOX").values()
    assert b"\\Seen" in flags
    assert len(spooled(spool)) == 1
    # Nothing new: a second pass takes nothing again.
    make_poller(after_intake="flag").poll_once()
    assert len(spooled(spool)) == 1


def test_fetching_never_marks_a_message_seen_by_itself(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool
) -> None:
    """BODY.PEEK[]: with the acknowledgement failing, the message must still be unseen."""
    dovecot.append(user, mail(1))

    def fault(step: str, uid: int) -> None:
        if step == "ack":
            raise RuntimeError("injected: crash before the flag")

    with pytest.raises(RuntimeError):
        make_poller(after_intake="flag", fault=fault).poll_once()
    ((_raw, flags),) = dovecot.folder(user, "INBOX").values()
    assert b"\\Seen" not in flags


# ---------------------------------------------------------------------------- exactly once


def test_a_message_fetched_twice_after_a_crash_between_spool_and_move_makes_one_ticket(
    dovecot: Dovecot, user: str, make_poller: Poller, gateway: Gateway
) -> None:
    raw = mail(1)
    dovecot.append(user, raw)

    def crash(step: str, uid: int) -> None:
        if step == "ack":
            raise RuntimeError("injected: the poller dies between spool and move")

    with pytest.raises(RuntimeError):
        make_poller(spool=gateway.spool, fault=crash).poll_once()
    assert len(dovecot.folder(user, "INBOX")) == 1  # not moved: it will be fetched again
    make_poller(spool=gateway.spool).poll_once()
    assert dovecot.folder(user, "INBOX") == {}
    assert len(spooled(gateway.spool)) == 2

    gateway.drain()
    assert len(gateway.tickets()) == 1
    assert len(gateway.intakes()) == 2  # the second one recorded as a duplicate, not dropped


def test_the_same_mail_by_smtp_and_by_imap_makes_one_ticket(
    dovecot: Dovecot, user: str, make_poller: Poller, gateway: Gateway
) -> None:
    raw = mail(7)
    gateway.ingest(raw, channel="smtp")
    dovecot.append(user, raw)
    make_poller(spool=gateway.spool).poll_once()
    gateway.drain()
    assert len(gateway.tickets()) == 1


# ---------------------------------------------------------------------------- failures


def test_a_spool_that_fails_leaves_the_message_unseen_in_inbox(
    dovecot: Dovecot, user: str, make_poller: Poller, tmp_path: Path
) -> None:
    dovecot.append(user, mail(1), mail(2))

    def unwritable() -> None:
        raise OSError(errno.EIO, "injected: disk error")

    broken = Spool(tmp_path / "broken", fsync=False, min_free_bytes=0, write_fault=unwritable)
    try:
        poller = make_poller(spool=broken)
        poller.poll_once()
        assert poller.stats.temp_failures == 1 and poller.stats.quarantined == 0
        assert "disk error" in (poller.stats.last_error or "")
    finally:
        broken.close()
    inbox = dovecot.folder(user, "INBOX")
    assert len(inbox) == 2 and all(b"\\Seen" not in flags for _raw, flags in inbox.values())
    assert dovecot.folder(user, "Processed") == {}
    assert dovecot.folder(user, "Quarantine") == {}


def test_a_full_spool_is_retried_and_never_quarantines(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool, run_poller: Run
) -> None:
    dovecot.append(user, mail(1))
    calls = {"n": 0}

    def full_three_times() -> None:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise OSError(errno.ENOSPC, "injected: no space left")

    spool._write_fault = full_three_times  # the spool's own fault seam
    poller = make_poller(max_attempts=1)
    run_poller(poller)
    wait_for(lambda: len(spooled(spool)) == 1, timeout=20)
    wait_for(lambda: dovecot.folder(user, "Processed"), timeout=10)
    assert poller.stats.temp_failures == 3
    assert poller.stats.quarantined == 0 and dovecot.folder(user, "Quarantine") == {}


def test_a_poison_message_goes_to_quarantine_and_the_next_one_flows(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool
) -> None:
    poison, good = mail(1), mail(2)
    dovecot.append(user, poison, good)

    def unreadable(step: str, uid: int) -> None:
        if step == "fetch" and uid == 1:
            raise ValueError("injected: the server cannot read this message")

    poller = make_poller(fault=unreadable, max_attempts=3)
    poller.poll_once()

    assert [raw for _env, raw in spooled(spool)] == [good]
    assert [m[0] for m in dovecot.folder(user, "Quarantine").values()] == [poison]
    assert [m[0] for m in dovecot.folder(user, "Processed").values()] == [good]
    assert dovecot.folder(user, "INBOX") == {}
    assert poller.stats.quarantined == 1 and poller.stats.fetch_failures == 3


def test_a_message_over_the_size_limit_is_quarantined_without_fetching_its_body(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool
) -> None:
    big = mail(1, body="x" * 50_000)
    dovecot.append(user, big, mail(2))
    fetched: list[int] = []
    poller = make_poller(
        max_message_bytes=20_000,
        fault=lambda step, uid: fetched.append(uid) if step == "fetch" else None,
    )
    poller.poll_once()
    assert fetched == [2]
    assert len(dovecot.folder(user, "Quarantine")) == 1
    assert len(spooled(spool)) == 1
    assert poller.stats.quarantined == 1


def test_a_database_that_is_down_does_not_stop_intake(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool
) -> None:
    down = ChannelStateStore(make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    dovecot.append(user, mail(1))
    poller = make_poller(store=down)
    poller.poll_once()
    assert len(spooled(spool)) == 1
    assert dovecot.folder(user, "INBOX") == {}
    assert poller.stats.cursor_pending  # kept in memory, written when the database is back
    down.engine.dispose()


# ---------------------------------------------------------------------------- cursor


def test_the_cursor_is_kept_in_channel_state(
    dovecot: Dovecot, user: str, make_poller: Poller, database_url: str
) -> None:
    upgrade(database_url)
    store = ChannelStateStore(make_engine(database_url))
    try:
        dovecot.append(user, mail(1), mail(2))
        make_poller(store=store, after_intake="flag").poll_once()
        validity, last = (store.get("imap:support", "cursor") or "").split(":")
        assert int(validity) > 0 and last == "2"
        store.set("imap:support", "other", "x")
        store.set("imap:support", "other", "y")
        assert store.get("imap:support", "other") == "y"
        assert store.get("imap:nobody", "cursor") is None
    finally:
        store.engine.dispose()


def test_a_uidvalidity_change_rescans_the_folder_without_doubling_tickets(
    dovecot: Dovecot, user: str, make_poller: Poller, gateway: Gateway
) -> None:
    store = ChannelStateStore(make_engine(gateway.settings.database_url))
    try:
        dovecot.append(user, mail(1))
        make_poller(spool=gateway.spool, store=store, after_intake="flag").poll_once()
        # The folder was "rebuilt": another UIDVALIDITY, and a last UID far beyond the new mail.
        store.set("imap:support", "cursor", "1:999999")
        dovecot.append(user, mail(2))
        poller = make_poller(spool=gateway.spool, store=store, after_intake="flag")
        poller.poll_once()
        assert poller.stats.rescans == 1
        assert len(spooled(gateway.spool)) == 2  # the new one found; the old one not refetched
        gateway.drain()
        assert len(gateway.tickets()) == 2
        assert len(gateway.intakes()) == 2
    finally:
        store.engine.dispose()


def test_a_backlog_of_300_messages_drains_in_batches(
    dovecot: Dovecot,
    user: str,
    make_poller: Poller,
    spool: Spool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dovecot.append(user, *(mail(n) for n in range(300)))
    body_fetches: list[int] = []
    real_fetch = IMAPClient.fetch

    def counting_fetch(self: Any, messages: Any, data: Any, modifiers: Any = None) -> Any:
        if "BODY.PEEK[]" in data:
            body_fetches.append(len(messages))
        return real_fetch(self, messages, data, modifiers)

    monkeypatch.setattr(IMAPClient, "fetch", counting_fetch)
    make_poller(batch_size=50).poll_once()
    assert len(spooled(spool)) == 300
    assert dovecot.folder(user, "INBOX") == {}
    assert max(body_fetches) <= 50 and len(body_fetches) >= 6


# ---------------------------------------------------------------------------- connections


def test_idle_spools_a_message_appended_while_the_poller_idles(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool, run_poller: Run
) -> None:
    poller = make_poller(poll_seconds=600)  # only IDLE can bring it in quickly
    run_poller(poller)
    wait_for(lambda: poller.stats.connected and poller.stats.idle, timeout=10)
    time.sleep(0.3)  # let it enter IDLE
    dovecot.append(user, mail(1))
    # Only IDLE can bring it in before the 600-second poll: the bound is the poll, not a speed.
    wait_for(lambda: len(spooled(spool)) == 1, timeout=60)
    wait_for(lambda: poller.stats.acknowledged == 1, timeout=10)


def test_polling_takes_mail_when_idle_is_off(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool, run_poller: Run
) -> None:
    poller = make_poller(idle=False, poll_seconds=0.2)
    run_poller(poller)
    wait_for(lambda: poller.stats.connected, timeout=10)
    dovecot.append(user, mail(1))
    wait_for(lambda: len(spooled(spool)) == 1, timeout=10)
    assert not poller.stats.idle


def test_the_poller_reconnects_after_the_server_drops_the_connection(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool, run_poller: Run
) -> None:
    poller = make_poller()
    run_poller(poller)
    wait_for(lambda: poller.stats.connected and poller.stats.idle, timeout=10)
    time.sleep(0.3)
    dovecot.kick(user)
    dovecot.append(user, mail(1))
    wait_for(lambda: len(spooled(spool)) == 1, timeout=20)
    wait_for(lambda: poller.stats.reconnects >= 1, timeout=10)
    wait_for(lambda: dovecot.folder(user, "INBOX") == {}, timeout=10)


def test_the_last_error_carries_its_time_and_is_marked_past_once_a_fetch_succeeds(
    user: str, spool: Spool, make_poller: Poller, run_poller: Run
) -> None:
    server = start_or_skip()  # our own: stopping it must not disturb the other tests
    try:
        poller = make_poller(server=server)
        stats = poller.stats
        run_poller(poller)
        wait_for(lambda: stats.connected and stats.idle, timeout=15)
        assert (stats.last_error, stats.past_error) == (None, None)

        server.halt()  # the mailbox is down: the error is current, with the time it happened
        wait_for(lambda: "ConnectionRefusedError" in (stats.last_error or ""), timeout=15)
        assert stats.last_error_at is not None and stats.last_error_at.endswith("Z")

        server.launch()  # back: the next whole fetch puts the error behind us
        server.append(user, mail(1))
        wait_for(lambda: len(spooled(spool)) == 1, timeout=30)
        wait_for(lambda: stats.last_error is None, timeout=15)
        assert stats.last_error_at is None
        assert "ConnectionRefusedError" in (stats.past_error or "")
        assert stats.past_error_at is not None and stats.recovered_at is not None
        assert stats.past_error_at <= stats.recovered_at  # ISO 8601 UTC: order is time order
    finally:
        server.stop()


def test_a_mailbox_with_a_wrong_password_does_not_stop_another(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool, run_poller: Run
) -> None:
    bad = make_poller(password="wrong", username=user + "x")
    good = make_poller()
    run_poller(bad)
    run_poller(good)
    dovecot.append(user, mail(1))
    # Generous bounds: on a loaded machine the good poller's first login and IDLE can take a
    # while; the assertion is that it gets there at all while the bad one keeps failing.
    wait_for(lambda: len(spooled(spool)) == 1, timeout=30)
    wait_for(lambda: bad.stats.reconnects >= 2, timeout=30)
    assert "refused" in (bad.stats.last_error or "")
    assert not bad.stats.connected


def test_mail_announced_during_our_own_search_is_taken_before_idle_not_at_its_renewal(
    dovecot: Dovecot,
    user: str,
    make_poller: Poller,
    spool: Spool,
    run_poller: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race behind a flaky test: mail arrives while the poller's SEARCH runs. The server
    answers the SEARCH on its old view and announces the message (`* 1 EXISTS`) in that same
    response; having announced it, it says nothing at IDLE. Reproduced exactly: the first empty
    SEARCH is followed by an APPEND from another session and one more command of ours that
    carries the announcement. The poller must take the message now, not at IDLE renewal."""
    raced = False

    class RacingClient(IMAPClient):  # type: ignore[misc]
        def search(self, criteria: Any = "ALL", charset: str | None = None) -> Any:
            nonlocal raced
            found = super().search(criteria, charset)
            if not found and not raced:
                raced = True
                dovecot.append(user, mail(1))
                # Any command now carries `* 1 EXISTS` in its answer (RFC 3501 7.3.1).
                super().search(["SUBJECT", "no-such-subject-in-this-mailbox"])
            return found

    monkeypatch.setattr("channels.imap.IMAPClient", RacingClient)
    poller = make_poller(idle=True)
    poller.idle_renew_seconds = 600.0  # renewal would come far too late for this test
    run_poller(poller)
    wait_for(lambda: raced, timeout=30)
    wait_for(lambda: len(spooled(spool)) == 1, timeout=20)


def test_mail_announced_with_the_servers_idle_continuation_is_taken_not_at_idle_renewal(
    dovecot: Dovecot,
    user: str,
    make_poller: Poller,
    spool: Spool,
    run_poller: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race behind the reload test's flakes under load: mail arrives after the poller's
    last SEARCH, before (or just as) it enters IDLE. Dovecot answers IDLE with `+ idling` and
    at once `* 1 EXISTS`, in one segment; reading the continuation line pulls both into
    imaplib's read buffer, where imapclient's idle_check (which polls the socket) never looks.
    Reproduced exactly: the first IDLE is preceded by an APPEND from another session. The
    poller must take the message now, not when it renews IDLE minutes later."""
    raced = False

    class RacingClient(IMAPClient):  # type: ignore[misc]
        def idle(self) -> None:
            nonlocal raced
            if not raced:
                raced = True
                dovecot.append(user, mail(1))
            super().idle()

    monkeypatch.setattr("channels.imap.IMAPClient", RacingClient)
    poller = make_poller(idle=True, poll_seconds=600)
    poller.idle_renew_seconds = 600.0  # renewal would come far too late for this test
    run_poller(poller)
    wait_for(lambda: raced, timeout=30)
    wait_for(lambda: len(spooled(spool)) == 1, timeout=20)


def test_starttls_required_but_not_offered_refuses_to_log_in_in_plaintext(
    dovecot: Dovecot, user: str, make_poller: Poller, run_poller: Run
) -> None:
    poller = make_poller(tls="starttls", allow_plaintext=False)
    with pytest.raises(StartTlsRequiredError):
        poller.poll_once()
    run_poller(poller)
    wait_for(lambda: "STARTTLS" in (poller.stats.last_error or ""), timeout=10)
    assert not poller.stats.connected
    assert f"user=<{user}>" not in dovecot.log()  # no login was ever attempted


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_mailboxes_verify_the_server_and_take_mail(
    dovecot_tls: Dovecot, user: str, make_poller: Poller, spool: Spool, tls: str
) -> None:
    assert dovecot_tls.cert is not None and dovecot_tls.tls_port is not None
    with IMAPClient(
        "127.0.0.1", port=dovecot_tls.tls_port, ssl=True, ssl_context=_ctx(dovecot_tls)
    ) as c:
        c.login(user, PASSWORD)
        c.append("INBOX", mail(1))
    port = dovecot_tls.port if tls == "starttls" else dovecot_tls.tls_port
    poller = make_poller(
        server=dovecot_tls, tls=tls, port=port, ca_file=str(dovecot_tls.cert), allow_plaintext=False
    )
    poller.poll_once()
    assert len(spooled(spool)) == 1
    # Without our CA the certificate is refused: no silent downgrade to "unverified".
    untrusted = make_poller(server=dovecot_tls, tls=tls, port=port, allow_plaintext=False)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.poll_once()


def _ctx(server: Dovecot) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(server.cert))


# ---------------------------------------------------------------------------- config


def _config_with_imap(tmp_path: Path, table: str) -> Path:
    config = configure(ROOT / "config", tmp_path / "config", tmp_path / "state")
    with open(config / "gateway.toml", "a") as fh:
        fh.write("\n" + table)
    return config


def test_plain_imap_to_a_remote_host_is_a_config_error_naming_file_and_key(
    tmp_path: Path,
) -> None:
    config = _config_with_imap(
        tmp_path,
        '[[imap]]\nname = "support"\nhost = "imap.example.com"\nusername = "u"\n'
        'tls = "plain"\nallow_plaintext = true\n',
    )
    with pytest.raises(ConfigError) as info:
        load(config)
    (problem,) = info.value.problems
    assert problem.file == "gateway.toml" and problem.key == "imap[0].tls"
    assert "localhost" in problem.message


def test_an_imap_table_with_an_unknown_key_or_bad_name_is_rejected(tmp_path: Path) -> None:
    config = _config_with_imap(
        tmp_path, '[[imap]]\nname = "Support Desk"\nhost = "h"\nusername = "u"\nfolders = "x"\n'
    )
    with pytest.raises(ConfigError) as info:
        load(config)
    keys = {p.key for p in info.value.problems}
    assert keys == {"imap[0].name", "imap[0].folders"}


def test_the_sample_config_has_no_mailbox_and_loads() -> None:
    assert load(ROOT / "config").gateway.imap == ()


# ---------------------------------------------------------------------------- end to end


def test_the_daemon_turns_mail_in_an_imap_mailbox_into_a_ticket(
    dovecot: Dovecot, user: str, make_config: Callable[..., Path]
) -> None:
    config = make_config(**NO_WEBHOOKS)
    with open(config / "gateway.toml", "a") as fh:
        fh.write(
            f'\n[[imap]]\nname = "help-desk"\nhost = "127.0.0.1"\nport = {dovecot.port}\n'
            f'tls = "plain"\nallow_plaintext = true\nusername = "{user}"\n'
            f'recipients = ["{RECIPIENT}"]\n'
        )
    daemon = DaemonProcess(config, env={"GATEWAY_IMAP_PASSWORD_HELP_DESK": PASSWORD})
    daemon.start()
    try:
        assert daemon.status()["listeners"]["imap:help-desk"].endswith("/INBOX")
        dovecot.append(user, mail(1))

        def tickets() -> list[Any]:
            out = gateway_cli(config, "tickets", "--json", "--all")
            assert out.returncode == 0, out.stderr
            found: list[Any] = json.loads(out.stdout)
            return found

        (ticket,) = wait_for(tickets, timeout=30, interval=0.3)
        assert ticket["channel"] == "imap"
        wait_for(lambda: dovecot.folder(user, "Processed"), timeout=10)
        status = wait_for(
            lambda: (
                daemon.status()["channels"].get("imap:help-desk", {}).get("accepted") == 1
                and daemon.status()
            ),
            timeout=10,
        )
        assert status["channels"]["imap:help-desk"]["connected"] is True
        assert "smtp" in status["channels"]  # the SMTP listener's counters are untouched
        out = gateway_cli(config, "status")
        assert b"imap:help-desk" in out.stdout
    finally:
        daemon.stop()


# ---------------------------------------------------------------------------- fetch attempts


def _stored_attempts(store: ChannelStateStore) -> dict[str, int]:
    text = store.get("imap:support", "attempts")
    assert text, "the fetch attempts were never written"
    uids: dict[str, int] = json.loads(text)["uids"]
    return uids


def test_failed_fetches_are_counted_across_a_restart_and_cleared_when_the_message_leaves(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool, database_url: str
) -> None:
    upgrade(database_url)
    store = ChannelStateStore(make_engine(database_url))
    try:
        poison, flaky = mail(1), mail(2)
        dovecot.append(user, poison, flaky)
        calls = {1: 0, 2: 0}

        def first_run(step: str, uid: int) -> None:
            if step != "fetch":
                return
            calls[uid] += 1
            if uid == 1 and calls[1] == 3:
                raise ConnectionResetError("injected: the gateway goes away here")
            if uid == 1 or calls[2] == 1:  # the poison one always, the flaky one once
                raise ValueError("injected: unreadable")

        with pytest.raises(ConnectionResetError):
            make_poller(store=store, fault=first_run, max_attempts=3).poll_once()
        assert _stored_attempts(store) == {"1": 2}  # the flaky one, taken, left no count behind
        assert [raw for _env, raw in spooled(spool)] == [flaky]

        def always(step: str, uid: int) -> None:
            if step == "fetch":
                raise ValueError("injected: still unreadable")

        # "After the restart": a new poller; one more failure is the third, not the first.
        restarted = make_poller(store=store, fault=always, max_attempts=3)
        restarted.poll_once()
        assert restarted.stats.fetch_failures == 1 and restarted.stats.quarantined == 1
        assert [m[0] for m in dovecot.folder(user, "Quarantine").values()] == [poison]
        assert _stored_attempts(store) == {}
    finally:
        store.engine.dispose()


def test_fetch_attempts_are_counted_in_memory_while_the_database_is_down(
    dovecot: Dovecot, user: str, make_poller: Poller, spool: Spool
) -> None:
    down = ChannelStateStore(make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    try:
        dovecot.append(user, mail(1), mail(2))

        def unreadable(step: str, uid: int) -> None:
            if step == "fetch" and uid == 1:
                raise ValueError("injected: unreadable")

        poller = make_poller(store=down, fault=unreadable, max_attempts=3)
        poller.poll_once()
        assert poller.stats.fetch_failures == 3 and poller.stats.quarantined == 1
        assert len(spooled(spool)) == 1
        assert dovecot.folder(user, "INBOX") == {}
    finally:
        down.engine.dispose()


# ---------------------------------------------------------------------------- the real daemon


def _with_mailbox(config: Path, server: Dovecot, user: str, name: str, **extra: object) -> Path:
    """Append an [[imap]] table for `user` on `server` to the config's gateway.toml."""
    lines = [
        "",
        "[[imap]]",
        f'name = "{name}"',
        'host = "127.0.0.1"',
        f"port = {server.port}",
        'tls = "plain"',
        "allow_plaintext = true",
        f'username = "{user}"',
        f'recipients = ["{RECIPIENT}"]',
        *(f"{key} = {json.dumps(value)}" for key, value in extra.items()),
    ]
    with open(config / "gateway.toml", "a") as fh:
        fh.write("\n".join(lines) + "\n")
    return config


def _password_env(name: str, password: str = PASSWORD) -> dict[str, str]:
    return {"GATEWAY_IMAP_PASSWORD_" + name.upper().replace("-", "_"): password}


def _tickets(config: Path) -> list[dict[str, Any]]:
    out = gateway_cli(config, "tickets", "--json", "--all")
    assert out.returncode == 0, out.stderr.decode()
    found: list[dict[str, Any]] = json.loads(out.stdout)
    return found


def _subjects(daemon: DaemonProcess) -> list[str]:
    """Ticket subjects straight from the daemon's SQLite database: cheap enough to poll (the
    final word is always `gateway tickets --json`)."""
    db = daemon.state / "gateway.db"
    if not db.exists():
        return []
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            return [row[0] for row in conn.execute("SELECT subject FROM tickets")]
        except sqlite3.OperationalError:  # not migrated yet
            return []


def _channel(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    channel: dict[str, Any] = daemon.status()["channels"].get(f"imap:{name}", {})
    return channel


def _status_line(config: Path, listener: str) -> str:
    """`gateway status`'s line for one listener."""
    out = gateway_cli(config, "status")
    assert out.returncode == 0, out.stderr.decode()
    (line,) = [ln for ln in out.stdout.decode().splitlines() if f" {listener} " in ln]
    return line


def _settled(daemon: DaemonProcess, subjects: list[str]) -> None:
    """Wait until every subject has a ticket and the spool is empty (duplicates processed too),
    then check, with `gateway tickets --json`, that there is exactly one ticket per subject."""
    wait_for(lambda: set(_subjects(daemon)) >= set(subjects), timeout=30, interval=0.2)
    wait_for(lambda: daemon.status()["spool_depth"] == 0, timeout=20, interval=0.2)
    assert sorted(t["subject"] for t in _tickets(daemon.config)) == sorted(subjects)


def test_kill_9_between_spool_and_move_makes_exactly_one_ticket_per_message_after_restart(
    dovecot: Dovecot, user: str, make_config: Callable[..., Path]
) -> None:
    config = _with_mailbox(make_config(**NO_WEBHOOKS), dovecot, user, "help-desk")
    env = _password_env("help-desk")
    messages = [mail(n) for n in range(1, 4)]
    dovecot.append(user, *messages)
    crashing = DaemonProcess(
        config, env={**env, "GATEWAY_CRASH_AT": "imap-after-spool-before-move"}
    )
    # The poller spools them, then kills the whole process group before telling the server.
    with pytest.raises(AssertionError, match="daemon exited -9"):
        crashing.start()
    assert len(list((crashing.state / "spool").rglob("*.msg"))) == 3
    assert len(dovecot.folder(user, "INBOX")) == 3  # nothing moved: all will be fetched again
    assert dovecot.folder(user, "Processed") == {}

    restarted = DaemonProcess(config, env=env).start()
    try:
        _settled(restarted, [f"Printer {n} offline" for n in range(1, 4)])
        assert dovecot.folder(user, "INBOX") == {}
        assert sorted(m[0] for m in dovecot.folder(user, "Processed").values()) == sorted(messages)
    finally:
        restarted.stop()


def test_idle_brings_mail_in_within_seconds_even_with_a_300_second_poll_interval(
    dovecot: Dovecot, user: str, make_config: Callable[..., Path]
) -> None:
    config = _with_mailbox(make_config(**NO_WEBHOOKS), dovecot, user, "help-desk", poll_seconds=300)
    daemon = DaemonProcess(config, env=_password_env("help-desk")).start()
    try:
        wait_for(lambda: _channel(daemon, "help-desk").get("idle"), timeout=15)
        time.sleep(0.5)  # the first (empty) drain is done: the poller sits in IDLE
        dovecot.append(user, mail(1))
        # Well inside the 300-second poll interval, so only IDLE can have brought it in.
        wait_for(lambda: _subjects(daemon), timeout=60, interval=0.1)
        (ticket,) = _tickets(config)
        assert ticket["channel"] == "imap" and ticket["subject"] == "Printer 1 offline"
    finally:
        daemon.stop()


def test_the_daemon_reconnects_after_dovecot_is_stopped_and_started_again_and_status_says_so(
    user: str, make_config: Callable[..., Path]
) -> None:
    server = start_or_skip()  # our own: stopping it must not disturb the other tests
    daemon: DaemonProcess | None = None
    try:
        config = _with_mailbox(make_config(**NO_WEBHOOKS), server, user, "help-desk")
        daemon = DaemonProcess(config, env=_password_env("help-desk")).start()
        wait_for(lambda: _channel(daemon, "help-desk").get("idle"), timeout=15)
        server.append(user, mail(1), mail(2))
        wait_for(lambda: len(_subjects(daemon)) == 2, timeout=30, interval=0.2)

        server.halt()  # the mail server goes away under the gateway
        wait_for(lambda: not _channel(daemon, "help-desk")["connected"], timeout=10)
        wait_for(
            lambda: "ConnectionRefusedError" in (_channel(daemon, "help-desk")["last_error"] or ""),
            timeout=15,
        )
        down = _status_line(config, "imap:help-desk")
        assert re.search(r"last_error=ConnectionRefusedError: .* \(since 20\d\d-.*Z\)$", down), down
        server.launch()  # and comes back on the same port with the same maildirs
        server.append(user, mail(3))
        server.append(user, mail(4), mail(5))

        _settled(daemon, [f"Printer {n} offline" for n in range(1, 6)])
        assert server.count(user, "INBOX") == 0 and server.count(user, "Processed") == 5
        # The daemon writes its status file once a second: wait for the snapshot that follows
        # the reconnection instead of reading one that may predate it (a CI run read such a one).
        wait_for(lambda: _channel(daemon, "help-desk")["connected"], timeout=10)
        assert _channel(daemon, "help-desk")["reconnects"] >= 1
        # Recovered: no current error; the past one is shown as past, with its times.
        wait_for(lambda: _channel(daemon, "help-desk")["last_error"] is None, timeout=10)
        up = _status_line(config, "imap:help-desk")
        assert re.search(
            r"last_error=None \(past: ConnectionRefusedError: .* at 20\d\d-.*Z; "
            r"fetching again since 20\d\d-.*Z\)$",
            up,
        ), up
    finally:
        if daemon is not None:
            daemon.stop()
        server.stop()


def test_reload_applies_a_changed_imap_table_without_a_restart(
    dovecot: Dovecot, user: str, make_config: Callable[..., Path]
) -> None:
    config = _with_mailbox(
        make_config(**NO_WEBHOOKS), dovecot, user, "help-desk", after_intake="move"
    )
    daemon = DaemonProcess(config, env=_password_env("help-desk")).start()
    try:
        dovecot.append(user, mail(1))
        _settled(daemon, ["Printer 1 offline"])
        wait_for(lambda: dovecot.count(user, "Processed") == 1, timeout=10)

        toml = config / "gateway.toml"
        toml.write_text(toml.read_text().replace('after_intake = "move"', 'after_intake = "flag"'))
        daemon.sighup()
        wait_for(lambda: "polling with the reloaded table" in daemon.log.read_text(), timeout=30)
        log = daemon.log.read_text()
        assert "[[imap]] help-desk: after_intake changed in gateway.toml: applied now" in log
        assert "after a restart" not in log

        # Taken by the reloaded table (flagged, left in place), and now: the new poller may be
        # still logging in, searching or entering IDLE as it lands. Under load it could land
        # with Dovecot's `+ idling` and wait for the IDLE renewal (test_mail_announced_with_
        # the_servers_idle_continuation_is_taken_not_at_idle_renewal).
        dovecot.append(user, mail(2))
        _settled(daemon, ["Printer 1 offline", "Printer 2 offline"])
        inbox = wait_for(lambda: dovecot.folder(user, "INBOX"), timeout=10)
        ((raw, _flags),) = inbox.values()
        assert b"Printer 2 offline" in raw
        wait_for(lambda: b"\\Seen" in next(iter(dovecot.folder(user, "INBOX").values()))[1], 10)
        assert dovecot.count(user, "Processed") == 1
    finally:
        daemon.stop()


def test_a_wrong_password_is_reported_by_mailbox_and_retried_while_smtp_goes_on(
    dovecot: Dovecot, user: str, make_config: Callable[..., Path]
) -> None:
    config = _with_mailbox(make_config(**NO_WEBHOOKS), dovecot, user, "wrong-pass")
    daemon = DaemonProcess(config, env=_password_env("wrong-pass", "not-the-password")).start()
    try:
        wait_for(lambda: _channel(daemon, "wrong-pass").get("reconnects", 0) >= 2, timeout=15)
        # Other channels are unaffected: SMTP answers 250 and the mail becomes a ticket.
        assert daemon.send(make_email(subject="Scanner down", message_id="<s1@x>")) == {}
        wait_for(lambda: _subjects(daemon), timeout=20, interval=0.1)
        (ticket,) = _tickets(config)
        assert ticket["subject"] == "Scanner down" and ticket["channel"] == "smtp"

        channel = _channel(daemon, "wrong-pass")
        assert not channel["connected"] and channel["accepted"] == 0
        assert f"login as '{user}' refused" in channel["last_error"]
        status = gateway_cli(config, "status").stdout.decode()
        (line,) = [ln for ln in status.splitlines() if "imap:wrong-pass" in ln]
        assert f"login as '{user}' refused" in line
        # The log names the mailbox; the retries back off (1 s base, doubling, with jitter).
        log = daemon.log.read_text()
        delays = [
            float(d)
            for d in re.findall(
                rf"imap:wrong-pass: login as '{user}' refused.*reconnecting in ([\d.]+)s", log
            )
        ]
        assert len(delays) >= 2 and delays == sorted(delays), log[-3000:]
    finally:
        daemon.stop()
