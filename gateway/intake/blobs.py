"""Content-addressed storage for raw messages and attachments under the state directory.

Owns durable, idempotent blob writes: a blob is written to a temp file, fsynced, renamed to its
sha256 and its directory fsynced *before* the ticket transaction that names it commits, so a
committed row never points at a missing file. Never deletes (retention owns that), never
touches the database.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from gateway.intake.entry import fsync_dir


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn: Callable[[int], int] = libc.syncfs
        return fn
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


class BlobStore:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> str:
        digest = sha256 or hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest  # content-addressed: the same bytes are already there
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.parent / f".tmp-{secrets.token_hex(6)}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            if self.fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        if self.fsync:
            fsync_dir(target.parent)
        return digest

    def put_many(self, items: list[tuple[bytes, str]]) -> None:
        """Write several blobs and make them durable with two filesystem syncs.

        Each is written to a temp file; one syncfs(2) of the blob filesystem makes every file's
        bytes durable; only then is each renamed to its digest, and a second syncfs makes the
        names durable (a batch of 64 messages costs two syncs, not 128 fsyncs). The bytes go
        first because a name is trusted once it exists: a blob found already there is never
        written again, so a name that outlived a crash without its bytes would stand, empty,
        for the message it names. Without syncfs, fsync per file and per directory, in the
        same order.
        """
        pending: list[tuple[Path, Path, bytes]] = []
        for data, digest in items:
            target = self.path(digest)
            if target.exists() or any(t == target for t, _, _ in pending):
                continue
            pending.append((target, target.parent / f".tmp-{secrets.token_hex(6)}", data))
        if not pending:
            return
        use_syncfs = self.fsync and _syncfs is not None
        for target, tmp, data in pending:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(tmp, "wb") as fh:
                fh.write(data)
                if self.fsync and not use_syncfs:
                    os.fsync(fh.fileno())
        if use_syncfs:
            self._sync_filesystem()  # the bytes, before any name points at them
        for target, tmp, _ in pending:
            os.replace(tmp, target)
        if not self.fsync:
            return
        if use_syncfs:
            self._sync_filesystem()  # the names
            return
        for directory in {t.parent for t, _, _ in pending}:
            fsync_dir(directory)

    def _sync_filesystem(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:  # type: ignore[misc]
                raise OSError(ctypes.get_errno(), "syncfs failed")
        finally:
            os.close(fd)

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()
