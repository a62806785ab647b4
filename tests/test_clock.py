"""The one clock (gateway/clock.py): every business "now" comes from it, tests name their instant.

Specification:
* no module of gateway/, channels/ or classifiers/ reads the machine's clock directly, except the
  clock module itself and a short allowlist with its reasons;
* the test hook GATEWAY_CLOCK_AT starts the clock at an instant and moves it forward, and a
  process started later (a daemon's workers, a CLI) shares exactly the same offset;
* a daemon started with the hook decides at the hooked instant, and says loudly that it is hooked.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from gateway import clock
from gateway.storage.models import Ticket
from tests.helpers import AFTER_HOURS, BUSINESS_HOURS, DaemonProcess, make_email, wait_for

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "channels", "classifiers")

# (module, reason). Keep it short: every other "now" is a business decision.
ALLOWED_DIRECT_READS = {
    "gateway/clock.py": "the clock itself",
    # classifiers/ imports nothing from gateway/; a model file is named after the real day it
    # was built, which is bookkeeping, not a decision about a ticket.
    "classifiers/model.py": "model file version date",
}

FORBIDDEN = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
}


def direct_clock_reads(source: str) -> list[tuple[int, str]]:
    """Calls like `datetime.now(...)`, `dt.datetime.now(...)`, `time.time()`, `date.today()`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        owner_name = (
            owner.id
            if isinstance(owner, ast.Name)
            else owner.attr
            if isinstance(owner, ast.Attribute)
            else None
        )
        if owner_name is not None and (owner_name, node.func.attr) in FORBIDDEN:
            found.append((node.lineno, f"{owner_name}.{node.func.attr}()"))
    return found


def test_no_module_reads_the_machine_clock_outside_the_clock_module_and_its_allowlist() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED_DIRECT_READS:
                continue
            for line, call in direct_clock_reads(path.read_text(encoding="utf-8")):
                offenders.append(f"{rel}:{line}: {call}")
    assert offenders == [], "use gateway.clock.now() (or wall_seconds()):\n" + "\n".join(offenders)


def test_the_scan_finds_every_spelling_of_a_direct_read() -> None:
    source = (
        "import datetime as dt, time\nfrom datetime import date, datetime\n"
        "a = datetime.now(UTC)\nb = dt.datetime.now(dt.UTC)\nc = time.time()\n"
        "d = date.today()\ne = datetime.utcnow()\nf = clock.now()\n"
    )
    assert [call for _, call in direct_clock_reads(source)] == [
        "datetime.now()",
        "datetime.now()",
        "time.time()",
        "date.today()",
        "datetime.utcnow()",
    ]


def test_the_allowlist_names_only_files_that_exist() -> None:
    assert all((ROOT / rel).is_file() for rel in ALLOWED_DIRECT_READS)


def test_the_hook_starts_at_its_instant_and_moves_forward() -> None:
    env = {clock.HOOK_ENV: "2026-12-31T23:59:30Z"}
    hooked = clock.from_environment(env)
    first = hooked.now()
    assert hooked.hooked
    assert abs(first - datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)) < timedelta(seconds=5)
    assert hooked.now() >= first
    # The anchor is written back, so a process started later shares the offset exactly.
    assert env[clock.HOOK_ENV].startswith("2026-12-31T23:59:30Z@")
    again = clock.from_environment(env)
    assert again.offset == hooked.offset


def test_a_child_process_inherits_the_same_offset() -> None:
    env = {clock.HOOK_ENV: "2026-03-08T06:30:00Z"}
    parent = clock.from_environment(env)
    out = subprocess.run(
        [sys.executable, "-c", "from gateway import clock; print(clock.current().offset)"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    assert out == str(parent.offset)


@pytest.mark.parametrize("value", ["tomorrow", "2026-12-12T08:00:00", "2026-13-01T00:00:00Z"])
def test_a_malformed_hook_is_refused_with_the_variables_name(value: str) -> None:
    with pytest.raises(clock.ClockHookError, match=clock.HOOK_ENV):
        clock.from_environment({clock.HOOK_ENV: value})


def test_without_the_hook_the_clock_is_the_systems() -> None:
    assert clock.from_environment({}) is clock.SYSTEM
    assert not clock.SYSTEM.hooked


def test_pin_clock_sets_this_process_and_reports_the_instant(
    pin_clock: Callable[[str], datetime],
) -> None:
    at = pin_clock(AFTER_HOURS)
    assert abs(at - datetime(2026, 12, 12, 8, tzinfo=UTC)) < timedelta(seconds=5)
    assert abs(clock.now() - at) < timedelta(seconds=5)


def urgent_ticket_from_daemon(config: Path, daemons: list[DaemonProcess], url: str) -> Ticket:
    daemon = DaemonProcess(config).start()
    daemons.append(daemon)
    daemon.send(
        make_email(
            subject="Server down",
            body="Our production server is down for all users, nobody can log in or work.",
            message_id="<hooked@acme-clinic.example>",
        ),
        sender="dana@acme-clinic.example",
    )
    engine = create_engine(url)
    try:

        def ticket() -> Ticket | None:
            with Session(engine) as session:
                return session.scalars(select(Ticket)).first()

        found = wait_for(ticket, timeout=60)
        assert isinstance(found, Ticket)
        return found
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("instant", "queue"), [(AFTER_HOURS, "on-call"), (BUSINESS_HOURS, "support")]
)
def test_a_daemon_started_with_the_hook_decides_at_that_instant_and_warns_loudly(
    instant: str,
    queue: str,
    make_config: Callable[..., Path],
    tmp_path: Path,
    daemons: list[DaemonProcess],
    pin_clock: Callable[[str], datetime],
) -> None:
    """The same urgent mail: Saturday 03:00 New York goes to on-call, Tuesday 10:00 does not."""
    at = pin_clock(instant)
    url = f"sqlite:///{tmp_path / 'state' / 'gateway.db'}"
    config = make_config(storage__url=url)
    ticket = urgent_ticket_from_daemon(config, daemons, url)
    assert ticket.created_at.date() == at.date()
    assert abs(ticket.created_at.replace(tzinfo=UTC) - at) < timedelta(minutes=2)
    assert (ticket.queue == "on-call") == (queue == "on-call"), ticket.routing_rule
    log = (config.parent / "daemon.log").read_text()
    assert f"!!! {clock.HOOK_ENV} is set" in log
