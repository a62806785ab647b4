"""Named crash points and injectable write failures for fault-injection tests (DESIGN promise 1).

What this module owns
---------------------
* `GATEWAY_CRASH_AT=<point>` makes the process that reaches that point kill its whole process
  group with SIGKILL — the daemon and its workers, exactly as `kill -9` of the service would.
  The points (each a one-line `crash_point(...)` call where it happens):

  - ``mid-spool-write``: a message is written to ``spool/tmp/`` but neither fsynced nor renamed
    into ``incoming/`` (`gateway/intake/spool.py`); nobody was acknowledged, recover() deletes it;
  - ``after-spool-before-ack``: durable in the spool, the 250 / 2xx not yet sent (SMTP, Twilio);
  - ``imap-after-spool-before-move``: durable in the spool, the IMAP server not yet told;
  - ``after-ack-before-persist``: a worker decided, nothing written yet (`gateway/pipeline.py`);
  - ``mid-transaction``: the intake row claimed the dedup key, ticket not yet written (`persist`);
  - ``before-commit``: the whole batch written, the transaction not yet committed;
  - ``mid-outbox-send``: the relay accepted a reply, the outbox row not yet marked sent.
* `GATEWAY_FAULT_SPOOL_ENOSPC=<path>`: while a file exists at ``<path>``, every spool write fails
  with ENOSPC (as a full disk would), for machines where a test cannot mount a small tmpfs. The
  test creates and removes the file to fill and free the "disk" of a running daemon.

What it must never do
---------------------
Cost anything when the variables are unset (always, in production): a dictionary lookup per
crash point, and no write hook at all.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

POINTS = (
    "mid-spool-write",
    "after-spool-before-ack",
    "after-ack-before-persist",
    "mid-transaction",
    "before-commit",
    "mid-outbox-send",
    "imap-after-spool-before-move",
)

SPOOL_ENOSPC_ENV = "GATEWAY_FAULT_SPOOL_ENOSPC"


def crash_point(name: str) -> None:
    if os.environ.get("GATEWAY_CRASH_AT") == name:
        os.killpg(os.getpgid(0), signal.SIGKILL)


def spool_write_fault() -> Callable[[], None] | None:
    """The spool's write hook from `GATEWAY_FAULT_SPOOL_ENOSPC`, or None when it is unset."""
    flag = os.environ.get(SPOOL_ENOSPC_ENV)
    if not flag:
        return None

    def disk_full() -> None:
        # Looked up at every write, so a test can fill and free the "disk" of a running daemon.
        if os.path.exists(flag):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), flag)

    return disk_full
