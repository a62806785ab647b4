"""The test rig around one gateway daemon under faults: its config, crashing it on purpose,
killing the throwaway Dovecot, and waiting until everything owed has become a ticket.

Owns the glue the fault tests share; the load lives in load.py, the accounting in ledger.py.
Never asserts a duration: every wait has a generous bound that only keeps a broken run from
hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.faults.ledger import Ledger, count_markers
from tests.helpers import DaemonProcess, free_port, wait_for
from tests.imap.dovecot import PASSWORD, Dovecot
from tests.twilio.conftest import OUR_NUMBER, PUBLIC, SID, TOKEN

MAILBOX = "faults"  # the [[imap]] name: status shows imap:faults


def daemon_env() -> dict[str, str]:
    return {
        "GATEWAY_TWILIO_AUTH_TOKEN": TOKEN,
        "GATEWAY_IMAP_PASSWORD_" + MAILBOX.upper(): PASSWORD,
    }


def fault_config(
    make_config: Callable[..., Path],
    *,
    relay_port: int | None,
    twilio_api: str,
    mailbox: tuple[Dovecot, str] | None = None,
    imap_port: int | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Path:
    """The sample config with fixed ports (senders reach a restarted daemon at the same place),
    signed Twilio webhooks, the relay and Twilio API stand-ins, and optionally a mailbox."""
    settings: dict[str, object] = {
        "smtp__port": free_port(),
        "webhooks__port": free_port(),
        "webhooks__public_url": PUBLIC,
        "webhooks__account_sid": SID,
        "webhooks__from_number": OUR_NUMBER,
        "webhooks__rest_base_url": twilio_api,
        "outbound__enabled": relay_port is not None,
        "outbound__relay_port": relay_port or 25,
        # Every acknowledgement is really sent: the per-recipient limit would suppress most.
        "outbound__per_recipient_limit": 100_000,
        "outbound__max_backoff_seconds": 1,
    }
    settings.update(overrides or {})
    config = make_config(**settings)
    if mailbox is not None:
        server, user = mailbox
        with open(config / "gateway.toml", "a") as fh:
            fh.write(
                f'\n[[imap]]\nname = "{MAILBOX}"\nhost = "127.0.0.1"\n'
                f"port = {imap_port or server.port}\n"
                f'tls = "plain"\nallow_plaintext = true\nusername = "{user}"\n'
                f'recipients = ["support@example.com"]\n'
            )
    return config


def ports_of(config: Path) -> tuple[int, int]:
    """(smtp, webhooks) ports as configured."""
    from gateway.config.loader import load

    settings = load(config).gateway
    return settings.smtp.port, settings.webhooks.port


def database_url(config: Path) -> str:
    from gateway.config.loader import load

    return load(config).database_url


def spool_dir(config: Path) -> Path:
    from gateway.config.loader import load

    return load(config).spool_dir


def crash_at(
    config: Path, point: str, daemons: list[DaemonProcess], bound: float = 90.0
) -> DaemonProcess:
    """Start the daemon with `GATEWAY_CRASH_AT=point` and wait until the point killed its whole
    process group. It may die before it ever reports ready (work was waiting for it)."""
    daemon = DaemonProcess(config, env={**daemon_env(), "GATEWAY_CRASH_AT": point})
    daemons.append(daemon)
    try:
        daemon.start()
    except AssertionError:
        if daemon.proc is None or daemon.proc.poll() is None:
            raise  # not started at all, or not ready in time: a real failure
    assert daemon.proc is not None
    try:
        code = daemon.proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"crash point {point!r} was not reached within {bound}s") from None
    assert code == -signal.SIGKILL, f"daemon exited {code}, not by crash point {point!r}"
    # Its workers were in the same process group: none may outlive it.
    wait_for(lambda: not _group_alive(daemon.proc.pid if daemon.proc else 0), timeout=10)
    return daemon


def _processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        found.append((int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return found


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is left in process group `pgid`."""
    return any(group == pgid and state != "Z" for _, state, _, group in _processes())


def kill_dovecot(server: Dovecot) -> None:
    """kill -9 of the mail server: the master and every process under it, no goodbyes."""
    if server.proc is None:
        return
    table = _processes()
    doomed = [server.proc.pid]
    for pid in doomed:  # grows while we walk it: children, grandchildren, ...
        doomed += [child for child, _, parent, _ in table if parent == pid]
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    wait_for(
        lambda: not any(pid in doomed and state != "Z" for pid, state, _, _ in _processes()),
        timeout=10,
    )
    server.proc = None


def spool_depth(daemon: DaemonProcess) -> int:
    """Entries waiting or being processed, counted on disk (the status file lags a second)."""
    spool = daemon.state / "spool"
    return sum(
        1 for directory in ("incoming", "claimed") for _ in (spool / directory).glob("*.msg")
    )


def inbox(server: Dovecot, user: str) -> int:
    try:
        return server.count(user)
    except Exception:
        return -1  # not answering right now: not settled


def settle_tickets(ledger: Ledger, url: str, bound: float = 120.0) -> None:
    """Wait until every message acknowledged so far has a ticket."""
    owed = ledger.acknowledged()
    try:
        wait_for(lambda: owed <= set(count_markers(url)), timeout=bound, interval=0.3)
    except AssertionError:
        missing = sorted(owed - set(count_markers(url)))
        raise AssertionError(
            f"{len(missing)} acknowledged without a ticket after {bound}s: {missing[:5]}"
        ) from None


def settle(
    daemon: DaemonProcess,
    ledger: Ledger,
    url: str,
    mailbox: tuple[Dovecot, str] | None,
    bound: float = 120.0,
) -> None:
    """Wait until every acknowledged message has a ticket, the spool is empty and the mailbox
    has been emptied; then stop the daemon gracefully, so nothing is in flight when counting."""
    settle_tickets(ledger, url, bound)
    try:
        wait_for(
            lambda: not spool_depth(daemon) and (mailbox is None or inbox(*mailbox) == 0),
            timeout=bound,
            interval=0.3,
        )
    except AssertionError:
        raise AssertionError(
            f"not settled within {bound}s: spool depth {spool_depth(daemon)}, "
            f"mailbox {inbox(*mailbox) if mailbox else '-'}"
        ) from None
    daemon.stop()


def imap_temp_failures(daemon: DaemonProcess) -> int:
    """How often the daemon's poller found the spool refusing (status, updated every second)."""
    value = status_channel(daemon, "imap:" + MAILBOX).get("temp_failures", 0)
    return value if isinstance(value, int) else 0


def status_channel(daemon: DaemonProcess, name: str) -> dict[str, object]:
    try:
        data = json.loads((daemon.state / "status" / "daemon.json").read_text())
    except (OSError, ValueError):
        return {}
    found: dict[str, object] = data.get("channels", {}).get(name, {})
    return found


def log(line: str) -> None:
    """The run's timeline in the test output (-s), to see where the time goes."""
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def pause(seconds: float) -> None:
    """Let the load run (a fault's moment is chosen by the seeded RNG, not asserted)."""
    time.sleep(seconds)
