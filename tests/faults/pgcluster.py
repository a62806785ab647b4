"""A private, throwaway PostgreSQL cluster a test may stop and start at will.

The shared server at 127.0.0.1:5432 belongs to every test; a test that takes its database away
needs one of its own: `initdb` into a temporary directory and `pg_ctl` on a free port, run as
the `postgres` user when we are root (both refuse to run as root), from the newest
/usr/lib/postgresql/<version>/bin. Trust authentication on 127.0.0.1 only; the socket directory
is the cluster's own. Never imports pytest: the caller decides what "unavailable" means.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port


class PostgresUnavailableError(Exception):
    """initdb/pg_ctl are missing, or the cluster would not start (the message says which)."""


def postgres_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian layout), else initdb on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class PrivatePostgres:
    root: Path
    bindir: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def _check(self, *args: str) -> None:
        done = self._run(*args)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailableError(
                f"{' '.join(args[:2])} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}\n{tail}"
            )

    def start(self) -> None:
        # fsync=off: only this process-level test's speed changes; a killed server keeps the OS
        # page cache, so nothing it committed is lost by it.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off"
        )
        self._check(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
            "-t", "60", "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash (no shutdown checkpoint; the next start recovers from WAL)."""
        self._check("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_private_postgres() -> PrivatePostgres:
    """initdb + start on a free port; PostgresUnavailableError when it cannot be done here."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        raise PostgresUnavailableError("initdb/pg_ctl not found (/usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PostgresUnavailableError("runuser not found (needed to run initdb as postgres)")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailableError("no 'postgres' user to run initdb as") from None
    # Not under pytest's 0700 tmp: the postgres user must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = PrivatePostgres(root=root, bindir=bindir, port=free_port())
    try:
        cluster._check(
            "initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
