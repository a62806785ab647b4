"""Content-addressed storage for raw messages and attachments under the state directory.

Owns durable, idempotent blob writes: a blob is written to a temp file, fsynced, renamed to its
sha256 and its directory fsynced *before* the ticket transaction that names it commits, so a
committed row never points at a missing file. Never deletes (retention owns that), never
touches the database.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path


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
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return digest

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()
