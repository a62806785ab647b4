"""Fixtures of the fault-injection suite: the session's fault table (printed at the end of
the run, written to ``tests/artifacts/faults/`` or under ``$GATEWAY_TEST_ARTIFACTS``), the
seed, Dovecot servers, and the stand-in for the Twilio REST API.

Without Dovecot or a private PostgreSQL the tests that need them skip; under CI=true they fail.
The seed comes from ``$GATEWAY_FAULT_SEED`` (default 20261123) and is printed with the table, so
a failing run can be repeated exactly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.ledger import FaultRow, FaultTable, render
from tests.helpers import ROOT
from tests.imap.conftest import start_or_skip
from tests.imap.dovecot import Dovecot
from tests.twilio.conftest import FakeTwilioApi

# The suite's convention (tests/queue_page): $GATEWAY_TEST_ARTIFACTS, else tests/artifacts/.
ARTIFACTS = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
SEED = int(os.environ.get("GATEWAY_FAULT_SEED", "20261123"))
TABLE = pytest.StashKey[FaultTable]()  # this session's rows, kept on pytest's config


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    table = config.stash.get(TABLE, None)
    if table is None or not table.table:
        return
    terminalreporter.write_sep("=", f"fault table (seed {SEED})")
    terminalreporter.write_line(render(table.table))
    terminalreporter.write_line(f"(written to {table.directory / 'fault-table.txt'})")


@pytest.fixture(scope="session")
def seed() -> int:
    return SEED


@pytest.fixture
def record_faults(request: pytest.FixtureRequest) -> Callable[[list[FaultRow]], None]:
    """Add a test's rows to the session table, and fail the test on any loss or duplicate."""

    table = request.config.stash.setdefault(TABLE, FaultTable(ARTIFACTS / "faults"))

    def record(rows: list[FaultRow]) -> None:
        assert rows, "a fault test that sent nothing proves nothing"
        table.add(request.node.nodeid, rows)
        print("\n" + render(rows))
        problems = [p for row in rows for p in row.violations()]
        assert not problems, "\n".join(problems)

    return record


@pytest.fixture(scope="session")
def shared_dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the tests that do not stop it (each uses its own user)."""
    server = start_or_skip()
    yield server
    server.stop()


@pytest.fixture
def own_dovecot() -> Iterator[Dovecot]:
    """A Dovecot of this test's own, for killing."""
    server = start_or_skip()
    yield server
    server.stop()


@pytest.fixture
def mail_user() -> str:
    return f"fx{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilioApi]:
    api = FakeTwilioApi()
    yield api
    api.close()
