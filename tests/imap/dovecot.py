"""A real, throwaway Dovecot: started as a plain process (`dovecot -F -c <conf>`) with all its
state in a temporary directory. Shared by the IMAP tests (tests/imap/conftest.py) and the drain
benchmark (bench/imap_drain.py), so both talk to the same kind of server.

Plaintext IMAP on 127.0.0.1 (no STARTTLS offered), or, with ``with_tls``, a self-signed
certificate offering STARTTLS and implicit TLS. Any user name logs in with the password
`secret` (a static passdb), so each caller picks its own user, i.e. its own empty maildir.
Mail is delivered with IMAP APPEND. The master process can be stopped and started again on the
same port with the same maildirs (:meth:`Dovecot.halt`, :meth:`Dovecot.launch`), as an operator
restarting the mail server would. Never imports pytest: callers decide what "unavailable" means.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from tests.helpers import free_port

PASSWORD = "secret"


class DovecotUnavailableError(Exception):
    """Dovecot is not installed or would not start (the message says which, with its log)."""


def dovecot_binary() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    return "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None


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
    """One Dovecot instance: its directory, ports and (while running) its master process."""

    root: Path
    port: int
    binary: str
    tls_port: int | None = None  # implicit TLS (imaps), when started with a certificate
    cert: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    def client(self, user: str, port: int | None = None, timeout: float = 30) -> Any:
        client = IMAPClient("127.0.0.1", port=port or self.port, ssl=False, timeout=timeout)
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

    def count(self, user: str, folder: str = "INBOX") -> int:
        """Messages in `folder` (0 if it does not exist), by STATUS: cheap enough to poll."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return 0
            return int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])

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
        """Drop every connection of `user`, as a network cut would."""
        subprocess.run(["doveadm", "-c", str(self.conf), "kick", user], check=True, timeout=10)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def answers(self) -> bool:
        try:
            self.client("probe", timeout=5).logout()
        except Exception:
            return False
        return True

    def launch(self, timeout: float = 15.0) -> None:
        """Start the master process (again) and wait until it logs a user in."""
        with open(self.root / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None and not self.answers():
            time.sleep(0.1)
        if self.proc.poll() is not None or not self.answers():
            errors = (self.root / "stderr.log").read_text(errors="replace") + self.log()
            self.halt()
            raise DovecotUnavailableError(f"dovecot did not start: {errors.strip()[-2000:]}")

    def halt(self) -> None:
        """Stop the master process and its children, as stopping the service does; keep the
        maildirs. (The master exits within a second of SIGTERM, but an imap process serving an
        IDLE client lingers on for ~10 s unless told too.)"""
        if self.proc is not None and self.proc.poll() is None:
            children = _children(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and any(_alive(pid) for pid in children):
                time.sleep(0.05)
            for pid in children:
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.proc = None

    def stop(self) -> None:
        """Stop and remove everything."""
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)


def _children(parent: int) -> list[int]:
    """PIDs whose parent is `parent` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_dovecot(with_tls: bool = False) -> Dovecot:
    """A running Dovecot in a fresh temporary directory; DovecotUnavailableError if it cannot."""
    binary = dovecot_binary()
    if binary is None:
        raise DovecotUnavailableError("dovecot is not installed")
    user, uid, gid = _mail_user()
    # Not under pytest's 0700 tmp: the mail user must be able to reach its maildirs.
    root = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
    root.chmod(0o755)
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir()
    os.chown(root / "mail", uid, gid)
    dovecot = Dovecot(root=root, port=free_port(), binary=binary)
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
# IDLE learns of new mail by inotify; when a brand-new maildir is created by two sessions at once
# (the poller's SELECT racing a test's first APPEND), the notification can be missed and Dovecot
# falls back to its periodic check, every 30 s by default: as long as the tests' own bounds, and
# so a flake (seen 1 in 50 with mail_debug logs showing the APPEND, and the poller idle at
# last_uid 0). One second keeps the fallback well inside every bound.
mailbox_idle_check_interval = 1 secs
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
# No authentication penalty (anvil): a test's deliberately wrong password must not slow every
# other login from 127.0.0.1 by up to 15 s (it made the wrong-password test flaky). Dovecot's
# documented switch for turning the penalty off: mode 0 on the anvil-auth-penalty socket.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
    )
    try:
        dovecot.launch()
    except DovecotUnavailableError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return dovecot
