"""Fixtures for the hostile suite: one real daemon per module (a daemon takes seconds to start;
the tests of a module share it and tell their messages apart by spool id), with a capturing relay
for what it sends."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import CapturingRelay, DaemonProcess, configure


@pytest.fixture(scope="module")
def module_relay() -> Iterator[CapturingRelay]:
    relay = CapturingRelay()
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def start_daemon(
    tmp_path_factory: pytest.TempPathFactory, trained_models: Path
) -> Iterator[Callable[..., DaemonProcess]]:
    """Start a daemon on the sample config with `section__key` overrides; stopped at the end
    of the module whatever happened."""
    started: list[DaemonProcess] = []

    def start(**overrides: object) -> DaemonProcess:
        base = tmp_path_factory.mktemp("daemon")
        shutil.copytree(trained_models, base / "state" / "models")
        config = configure(ROOT / "config", base / "config", base / "state", **overrides)
        daemon = DaemonProcess(config)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()
