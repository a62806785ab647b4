"""A real, throwaway Dovecot for the IMAP channel's tests, and pollers built against it.

One Dovecot per test session, started as a plain process (`dovecot -F -c <conf>`) with all its
state in a temporary directory: plaintext IMAP on 127.0.0.1 (no STARTTLS offered), and, when a
test asks for it, a second instance with a self-signed certificate offering STARTTLS and
implicit TLS. Any user name logs in with the password `secret` (a static passdb), so each test
uses its own user, i.e. its own empty maildir. Mail is delivered with IMAP APPEND.
Without Dovecot the tests skip, under CI=true they fail (`.ci/test` installs dovecot-imapd).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from channels.imap import MailboxPoller, PollerThread
from gateway.config.schema import ImapMailbox
from gateway.spool import Spool
from gateway.storage.channel_state import ChannelStateStore
from tests.helpers import free_port, wait_for

PASSWORD = "secret"
RECIPIENT = "support@example.com"


def _dovecot_binary() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    return "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true; .ci/test installs dovecot-imapd)")
    pytest.skip(f"{reason} (skipped outside CI)")


def _mail_user() -> tuple[str, int, int]:
    """Dovecot will not serve mail as root: a dedicated system user when we are root."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_uid, me.pw_gid
    try:
        entry = pwd.getpwnam("gwtest")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "gwtest"],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam("gwtest")
    return entry.pw_name, entry.pw_uid, entry.pw_gid


@dataclass
class Dovecot:
    """One running Dovecot instance."""

    root: Path
    port: int
    tls_port: int | None = None  # implicit TLS (imaps), when started with a certificate
    cert: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    def client(self, user: str, port: int | None = None) -> Any:
        client = IMAPClient("127.0.0.1", port=port or self.port, ssl=False, timeout=30)
        client.login(user, PASSWORD)
        return client

    def append(self, user: str, *messages: bytes, folder: str = "INBOX") -> None:
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            if len(messages) > 1:
                client.multiappend(folder, list(messages))
            else:
                client.append(folder, messages[0])

    def folder(self, user: str, folder: str) -> dict[int, tuple[bytes, tuple[bytes, ...]]]:
        """UID -> (raw bytes, flags) of every message in `folder` (empty if it does not exist)."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            if not uids:
                return {}
            data = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
            return {uid: (d[b"BODY[]"], tuple(d[b"FLAGS"])) for uid, d in data.items()}

    def kick(self, user: str) -> None:
        """Drop every connection of `user`, as a server restart or a network cut would."""
        subprocess.run(["doveadm", "-c", str(self.conf), "kick", user], check=True, timeout=10)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _start_dovecot(with_tls: bool) -> Dovecot:
    binary = _dovecot_binary()
    if binary is None:
        _unavailable("dovecot is not installed")
    assert binary is not None
    user, uid, gid = _mail_user()
    # Not under pytest's 0700 tmp: the mail user must be able to reach its maildirs.
    root = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
    root.chmod(0o755)
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir()
    os.chown(root / "mail", uid, gid)
    dovecot = Dovecot(root=root, port=free_port())
    ssl_lines = "ssl = no\n"
    imaps = "  inet_listener imaps {\n    port = 0\n  }\n"
    if with_tls:
        dovecot.cert = root / "cert.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", str(root / "key.pem"), "-out", str(dovecot.cert),
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        (root / "key.pem").chmod(0o600)
        dovecot.tls_port = free_port()
        ssl_lines = f"ssl = yes\nssl_cert = <{dovecot.cert}\nssl_key = <{root / 'key.pem'}\n"
        imaps = (
            f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {dovecot.tls_port}\n"
            "    ssl = yes\n  }\n"
        )
    unprivileged = ""
    if os.geteuid() != 0:
        unprivileged = f"default_login_user = {user}\ndefault_internal_user = {user}\n"
    dovecot.conf.write_text(
        f"""base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
listen = 127.0.0.1
protocols = imap
{ssl_lines}disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%u
first_valid_uid = 1
{unprivileged}service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {dovecot.port}
  }}
{imaps}}}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
"""
    )
    with open(root / "stderr.log", "wb") as stderr:
        dovecot.proc = subprocess.Popen(
            [binary, "-F", "-c", str(dovecot.conf)], stdout=subprocess.DEVNULL, stderr=stderr
        )

    def ready() -> bool:
        assert dovecot.proc is not None
        if dovecot.proc.poll() is not None:
            return True
        try:
            dovecot.client("probe").logout()
        except Exception:
            return False
        return True

    try:
        wait_for(ready, timeout=15, interval=0.1)
    except AssertionError:
        pass
    if dovecot.proc.poll() is not None or not _answers(dovecot):
        errors = (root / "stderr.log").read_text(errors="replace") + dovecot.log()
        dovecot.stop()
        _unavailable(f"dovecot did not start: {errors.strip()[-2000:]}")
    return dovecot


def _answers(dovecot: Dovecot) -> bool:
    try:
        dovecot.client("probe").logout()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    server = _start_dovecot(with_tls=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dovecot_tls() -> Iterator[Dovecot]:
    server = _start_dovecot(with_tls=True)
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
