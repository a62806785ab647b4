"""The one clock every business decision reads.

What this module owns
---------------------
* `now()`: the instant that SLA due times, business hours, after-hours surcharges, routing's
  `outside` rules, escalation, emergency-hold timeouts, retention, reopen windows and every
  `received_at` stamp are computed from. Code that needs "now" for a decision calls `now()` once
  at the top of its unit of work and passes the instant down; pure modules (calendars, routing,
  policy, emergency rules) take it as an argument and never read a clock themselves.
* `wall_seconds()`: the machine's real time in seconds, *never shifted*, for what other processes
  on the machine compare against their own clock: status-file heartbeats, "down since" in
  metrics, the timestamp in a webhook signature that a receiver checks against its clock.
* The test-only hook `GATEWAY_CLOCK_AT=<ISO 8601 instant>`: the clock of this process, and of
  every process it starts, reads that instant at the moment the hook is first read, then moves
  forward with real time. On that first read the variable is rewritten as ``<instant>@<anchor>``
  (the real epoch seconds it was anchored at), so a daemon's workers, started a second later,
  share the daemon's offset exactly. `gateway run` logs a loud warning when the hook is set
  (docs/testing.md: "Test hooks"). The test suite's switch `GATEWAY_TEST_EPOCH`
  (tests/conftest.py) is passed through this hook.

What it must never do
---------------------
Drive timeouts, waits or durations: those use `time.monotonic()` and are not business time.
Cost anything when the hook is unset beyond one `datetime.now`. A test fails when a direct
`datetime.now()`, `time.time()` or `date.today()` appears elsewhere in gateway/, channels/ or
classifiers/ (tests/test_clock.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

HOOK_ENV = "GATEWAY_CLOCK_AT"


class ClockHookError(ValueError):
    """`GATEWAY_CLOCK_AT` is set to something that is not an ISO 8601 instant."""


@dataclass(frozen=True)
class Clock:
    """Real time plus a fixed offset (zero in production)."""

    offset: timedelta = timedelta(0)
    # True when the test hook set this clock (even to an offset of zero).
    hooked: bool = False

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


SYSTEM = Clock()


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant with a zone (``Z`` or an offset), as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ClockHookError(f"{HOOK_ENV}: not an ISO 8601 instant: {text!r}") from exc
    if value.tzinfo is None:
        raise ClockHookError(f"{HOOK_ENV}: {text!r} names no zone; write it in UTC with a Z")
    return value.astimezone(UTC)


def from_environment(environ: MutableMapping[str, str] | None = None) -> Clock:
    """The clock the hook asks for, anchoring it (and writing the anchor back) on first read."""
    env = os.environ if environ is None else environ
    raw = env.get(HOOK_ENV)
    if not raw:
        return SYSTEM
    instant_text, _, anchor_text = raw.partition("@")
    instant = parse_instant(instant_text)
    if anchor_text:
        try:
            anchor = float(anchor_text)
        except ValueError as exc:
            raise ClockHookError(f"{HOOK_ENV}: bad anchor in {raw!r}") from exc
    else:
        anchor = time.time()
        # Children (the daemon's workers, a CLI a test runs) inherit the same offset.
        env[HOOK_ENV] = f"{instant_text.strip()}@{anchor!r}"
    real_anchor = datetime.fromtimestamp(anchor, UTC)
    return Clock(offset=instant - real_anchor, hooked=True)


_current: Clock | None = None


def current() -> Clock:
    """This process's clock: the hook's when set, else the system's."""
    global _current
    if _current is None:
        _current = from_environment()
    return _current


def now() -> datetime:
    """The business instant (UTC-aware)."""
    return current().now()


def reset() -> None:
    """Forget the cached clock, so the next `now()` reads the hook again (tests change it)."""
    global _current
    _current = None


def wall_seconds() -> float:
    """Real epoch seconds, never shifted: for heartbeats and other machines' clocks."""
    return time.time()


def wall_nanoseconds() -> int:
    """Real epoch nanoseconds, never shifted: spool ids sort by real arrival across processes."""
    return time.time_ns()
