"""Content-addressed storage for raw messages and attachments under the state directory.

Owns durable, idempotent blob writes: a blob is written to a temp file, fsynced, renamed to its
sha256 and its directory fsynced *before* the ticket transaction that names it commits, so a
committed row never points at a missing file. Never deletes (retention owns that), never
touches the database.

A blob is one of two files under ``<root>/<first two hex digits>/``:

* ``<sha256>``: exactly the blob's bytes (attachments, replies, anything handed over as bytes);
* ``<sha256>.msg``: a spool entry's file, hard-linked in by the worker, holding the blob's bytes
  after the spool's one-line ASCII JSON header (gateway/intake/spool.py). A raw message is
  already durable in its spool file, and a new file cost the worker a new inode a message (the
  slowest file operation on the CI machine's disk: issue 20), so it is linked, not copied. The
  spool never edits a file in place (a header change is a new file renamed over the old name),
  so the linked bytes never change; the link keeps the message once the spool deletes its own
  name. Where a link cannot be made (the spool on another filesystem, a file of another
  owner), the bytes are written as ``<sha256>``.

Read a blob with :meth:`BlobStore.get` or :func:`read_blob_file`, never by opening a path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from gateway.intake.entry import fsync_dir


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn: Callable[[int], int] = libc.syncfs
        return fn
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


# A blob kept as a hard link of its spool entry: its bytes follow the spool's header line.
SPOOLED: Final = ".msg"


def read_blob_file(path: Path) -> tuple[bytes, bytes]:
    """(the spool header a `.msg` blob carries, or b"" for a plain one; the blob's bytes)."""
    data = path.read_bytes()
    if path.name.endswith(SPOOLED):
        header, _, body = data.partition(b"\n")
        return header, body
    return b"", data


class BlobStore:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, sha256: str) -> Path:
        """Where the blob's bytes go when written as bytes (see `file` for where it is)."""
        return self.root / sha256[:2] / sha256

    def paths(self, sha256: str) -> tuple[Path, Path]:
        """Both names a blob may have: what deleting it must remove."""
        plain = self.path(sha256)
        return plain, plain.with_name(sha256 + SPOOLED)

    def file(self, sha256: str) -> Path | None:
        """The blob's file, in whichever form it was kept, or None."""
        for path in self.paths(sha256):
            if path.exists():
                return path
        return None

    def put(self, data: bytes, sha256: str | None = None) -> str:
        digest = sha256 or hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if self.file(digest) is not None:
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

    def put_many(
        self, items: list[tuple[bytes, str]], spooled: Mapping[str, Path] | None = None
    ) -> None:
        """Keep several blobs and make them durable with at most two filesystem syncs.

        `spooled` maps a digest to a spool entry's file holding those bytes after its header
        line: that blob is hard-linked in as `<digest>.msg`. Its bytes were fsynced by the
        spool before the entry was ever acknowledged, so only its new name needs a sync. Every
        other blob is written to a temp file; one syncfs(2) of the blob filesystem makes those
        files' bytes durable; only then is each renamed to its digest, and a second syncfs
        makes every name durable (a batch of 64 messages costs two syncs, not 128 fsyncs). The
        bytes go first because a name is trusted once it exists: a blob found already there is
        never written again, so a name that outlived a crash without its bytes would stand,
        empty, for the message it names. Without syncfs, fsync per file and per directory, in
        the same order.
        """
        sources = spooled or {}
        root = os.fspath(self.root)  # plain strings and os calls: the worker's hottest files
        pending: dict[str, tuple[str, bytes]] = {}  # target -> (temp file, bytes)
        linked = False  # a new name was linked in
        for data, digest in items:
            shard = os.path.join(root, digest[:2])
            source = sources.get(digest)
            if source is not None:
                made = self._link(os.fspath(source), shard, digest)
                if made is not None:
                    linked = linked or made
                    continue
            target = os.path.join(shard, digest)
            if target in pending or self.file(digest) is not None:
                continue
            os.makedirs(shard, mode=0o700, exist_ok=True)
            pending[target] = (os.path.join(shard, f".tmp-{secrets.token_hex(6)}"), data)
        if not pending and not linked:
            return
        use_syncfs = self.fsync and _syncfs is not None
        for tmp, data in pending.values():
            with open(tmp, "wb") as fh:
                fh.write(data)
                if self.fsync and not use_syncfs:
                    os.fsync(fh.fileno())
        if use_syncfs and pending:
            self._sync_filesystem()  # the bytes, before any name points at them
        for target, (tmp, _) in pending.items():
            os.replace(tmp, target)
        if not self.fsync:
            return
        if use_syncfs:
            self._sync_filesystem()  # the names
            return
        shards = {os.path.dirname(t) for t in pending}
        if linked:
            shards |= {os.path.join(root, d[:2]) for d in sources}
        for shard in shards:
            fsync_dir(Path(shard))

    @staticmethod
    def _link(source: str, shard: str, digest: str) -> bool | None:
        """Link a spool entry's file in as `<digest>.msg`: True if a new name was made, False
        if it was there already (an earlier attempt at the same bytes: nothing to sync), None
        if this filesystem cannot link (the caller writes the bytes instead). No look first:
        the link is one call, and a plain `<digest>` of the same bytes beside it is harmless
        (every reader and deleter knows both forms)."""
        target = os.path.join(shard, digest + SPOOLED)
        for _ in range(2):
            try:
                os.link(source, target)
            except FileExistsError:
                return False
            except FileNotFoundError:
                if not os.path.isfile(source):
                    return None  # the entry moved away meanwhile: write the bytes we hold
                os.makedirs(shard, mode=0o700, exist_ok=True)  # a shard's first blob
                continue
            except OSError:
                return None  # EXDEV (spool on another filesystem), EPERM, EMLINK, ...
            return True
        return None

    def _sync_filesystem(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:  # type: ignore[misc]
                raise OSError(ctypes.get_errno(), "syncfs failed")
        finally:
            os.close(fd)

    def get(self, sha256: str) -> bytes:
        """The blob's bytes; FileNotFoundError if it is not kept."""
        path = self.file(sha256)
        if path is None:
            raise FileNotFoundError(self.path(sha256))
        return read_blob_file(path)[1]
