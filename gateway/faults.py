"""Named crash points for fault-injection tests (DESIGN promise 1).

`GATEWAY_CRASH_AT=<point>` makes the process that reaches that point kill its whole process
group with SIGKILL — the daemon and its workers, exactly as `kill -9` of the service would.
Unset (always, in production) this is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "mid-spool-write",
    "after-spool-before-ack",
    "after-ack-before-persist",
    "mid-transaction",
    "before-commit",
    "mid-outbox-send",
    "imap-after-spool-before-move",
)


def crash_point(name: str) -> None:
    if os.environ.get("GATEWAY_CRASH_AT") == name:
        os.killpg(os.getpgid(0), signal.SIGKILL)
