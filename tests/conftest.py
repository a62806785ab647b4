"""Shared fixtures: real config directories, real databases, a real SMTP relay, a real daemon.

Factories over globals (aiosmtpd's conftest style): each test gets its own state directory and,
for PostgreSQL, its own database. Under CI=true a missing PostgreSQL is a failure, elsewhere a
clearly reported skip.

Time: no test reads the machine's clock for a decision. `GATEWAY_TEST_EPOCH=<ISO 8601 UTC
instant>` reruns the suite at that instant: every test's clock, and every daemon or CLI a test
starts, begins there and moves forward (through the hook in gateway/clock.py). Tests whose
outcome depends on the instant name it with `pin_clock` and keep it whatever the epoch.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from gateway import clock
from tests.helpers import (
    PG_ADMIN_URL,
    CapturingRelay,
    DaemonProcess,
    Gateway,
    configure,
    pg_available,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


EPOCH_ENV = "GATEWAY_TEST_EPOCH"

# Tests that load the whole machine (kill -9 under mixed load, several daemons at once, a
# browser): CI runs them alone after the parallel part (.ci/test), so their real servers never
# compete for the two cores with another test's. The soak is not one of them: its load is light
# (about 6 messages a second, a few % of a core) and its verdicts are relative to where each
# series settled, so it runs beside the other tests, as a daemon shares a machine.
SERIAL = (
    "tests/faults/",
    "tests/test_instances.py",
    "tests/test_reload_under_load.py",
    "tests/imap/test_imap_cluster.py",
    "tests/queue_page/test_browser.py",
)


# The files that take longest (the soak's two minutes, then the CLI's and IMAP's many real
# processes and servers, about two minutes each on these machines), started first so that none of
# them runs alone at the end of the parallel part while the other process has nothing left to do.
LONG_FIRST = (
    "tests/soak/",
    "tests/test_cli.py",
    "tests/imap/test_imap.py",
    "tests/test_pipeline.py",
    "tests/test_durability.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def under(item: pytest.Item, prefixes: tuple[str, ...]) -> bool:
        return item.nodeid.startswith(prefixes) or f"tests/{item.nodeid}".startswith(prefixes)

    for item in items:
        if under(item, SERIAL):
            item.add_marker(pytest.mark.serial)

    def rank(item: pytest.Item) -> int:
        return next((i for i, path in enumerate(LONG_FIRST) if under(item, (path,))),
                    len(LONG_FIRST))

    items.sort(key=rank)  # stable: within a file, and among the rest, the order is unchanged


def suite_epochs() -> tuple[str, ...]:
    """The instants the suite runs at, from GATEWAY_TEST_EPOCH (empty: the wall clock).

    One instant runs every test once at it. Several, separated by spaces or commas, run every
    collected test once at each (ids end in `@<instant>`) in one session, so one pytest-xdist
    session balances all of them across the cores instead of paying for a session per instant.
    """
    epochs = tuple(os.environ.get(EPOCH_ENV, "").replace(",", " ").split())
    for epoch in epochs:
        try:
            clock.parse_instant(epoch)
        except clock.ClockHookError as exc:
            raise pytest.UsageError(f"{EPOCH_ENV}: {exc}") from exc
    return epochs


def pytest_report_header() -> list[str]:
    epochs = " ".join(suite_epochs())
    return [
        f"postgresql: {'available' if pg_available() else 'NOT available'} ({PG_ADMIN_URL})",
        f"clock: {f'{EPOCH_ENV}={epochs}' if epochs else 'the wall clock'} "
        "(tests that name their instant keep it)",
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    epochs = suite_epochs()
    if len(epochs) > 1 and "suite_instant" in metafunc.fixturenames:
        metafunc.parametrize("suite_instant", epochs, indirect=True, ids=[f"@{e}" for e in epochs])


@pytest.fixture
def suite_instant(request: pytest.FixtureRequest) -> str | None:
    """The instant this test starts at: its GATEWAY_TEST_EPOCH (None: the wall clock)."""
    epochs = suite_epochs()
    param: str | None = getattr(request, "param", None)
    return param or (epochs[0] if epochs else None)


@pytest.fixture(autouse=True)
def _epoch_clock(monkeypatch: pytest.MonkeyPatch, suite_instant: str | None) -> Iterator[None]:
    """Each test starts at its GATEWAY_TEST_EPOCH instant when one is set; the hook reaches the
    daemons and CLIs a test starts through the environment."""
    if suite_instant:
        monkeypatch.setenv(clock.HOOK_ENV, suite_instant)
    clock.reset()
    yield
    clock.reset()


@pytest.fixture
def pin_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], datetime]:
    """Name the instant a test relies on: `pin_clock("2026-12-15T15:00:00Z")` (a Tuesday, 10:00
    in New York). The clock starts there and moves forward, in-process and in every daemon or
    CLI the test starts afterwards, whatever GATEWAY_TEST_EPOCH says."""

    def pin(instant: str) -> datetime:
        monkeypatch.setenv(clock.HOOK_ENV, instant)
        clock.reset()
        return clock.now()

    return pin


@pytest.fixture(scope="session")
def pg_server() -> str:
    if not pg_available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required under CI=true and is not running")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not running (skipped outside CI)")
    return PG_ADMIN_URL


@contextmanager
def _pg_database(server: str, template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (a copy of `template` when one is named), dropped on exit."""
    import psycopg

    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """One database per test process, migrated to the schema's head once. Running the
    migrations took 0.4-0.7 s a test on these machines; copying the result takes a tenth of it."""
    from gateway.storage.db import upgrade

    with _pg_database(pg_server) as url:
        upgrade(url)  # disposes its engine: a template must have no connection when copied
        yield url.rsplit("/", 1)[1]


@pytest.fixture
def pg_url(pg_server: str, pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, already at the schema's head (the gateway's own
    `upgrade` at start then finds nothing to do), dropped afterwards."""
    with _pg_database(pg_server, template=pg_template) as url:
        yield url


@pytest.fixture
def empty_pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (no schema at all), for the migrations' own tests."""
    with _pg_database(pg_server) as url:
        yield url


def _url_for_backend(request: pytest.FixtureRequest, sqlite_file: Path, pg_fixture: str) -> str:
    """The URL of this parametrized run's backend: `sqlite_file`, or the `pg_fixture` database."""
    if request.param == "sqlite":
        return f"sqlite:///{sqlite_file}"
    url: str = request.getfixturevalue(pg_fixture)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on SQLite and once on PostgreSQL (a database at the schema's head)."""
    return _url_for_backend(request, tmp_path / "state" / "gateway.db", "pg_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (no schema), once on SQLite and once on PostgreSQL."""
    return _url_for_backend(request, tmp_path / "gateway.db", "empty_pg_url")


@pytest.fixture
def relay() -> Iterator[CapturingRelay]:
    r = CapturingRelay()
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default classifier model, built once per run and copied into each state dir."""
    from gateway.service.runtime import load_runtime

    base = tmp_path_factory.mktemp("models")
    config = configure(ROOT / "config", base / "config", base / "state")
    load_runtime(config)
    return base / "state" / "models"


@pytest.fixture
def make_config(tmp_path: Path, trained_models: Path) -> Callable[..., Path]:
    """Copy the sample config into tmp_path and apply overrides (see helpers.configure)."""

    def factory(**overrides: object) -> Path:
        state = tmp_path / "state"
        if not (state / "models").exists():
            shutil.copytree(trained_models, state / "models")
        return configure(ROOT / "config", tmp_path / "config", state, **overrides)

    return factory


@pytest.fixture
def gateway(make_config: Callable[..., Path], database_url: str) -> Iterator[Gateway]:
    """The gateway in-process on each backend: ingest into its spool, drain its worker."""
    gw = Gateway(make_config(storage__url=database_url))
    yield gw
    gw.close()


@pytest.fixture
def shared_mail() -> Path:
    path = SHARED_DATA / "mail"
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing under CI=true")
        pytest.skip(f"{path} is absent (shared data is not on this machine)")
    return path


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts; every one is stopped afterwards, whatever the test did."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.stop()
