"""Forwarding fixtures: receivers on real ports, webhook secrets in the environment, a frozen
clock, and the gateway in-process (SQLite and PostgreSQL) with forwarding.toml written."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.forwarding.support import SECRET, Clock, Receiver, write_forwarding
from tests.helpers import Gateway


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def factory(*script: Any, after: Any = 200, hang_seconds: float = 2.0) -> Receiver:
        r = Receiver(list(script), after=after, hang_seconds=hang_seconds).start()
        started.append(r)
        return r

    yield factory
    for r in started:
        r.stop()


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "GATEWAY_FORWARD_SECRET_HELPDESK": SECRET,
        "GATEWAY_FORWARD_SECRET_BILLING_DESK": "another-secret",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _gateways(make_config: Callable[..., Path], url: str) -> Iterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def factory(*webhooks: str) -> Gateway:
        config = make_config(storage__url=url)
        write_forwarding(config, *webhooks)
        gw = Gateway(config)
        made.append(gw)
        return gw

    yield factory
    for gw in made:
        gw.close()


@pytest.fixture
def forwarding_gateway(
    make_config: Callable[..., Path], tmp_path: Path, secrets_env: dict[str, str]
) -> Iterator[Callable[..., Gateway]]:
    """The gateway in-process on SQLite with the given [[webhook]] tables (delivery behaviour
    does not depend on the backend; the claim and fan-out tests run on both)."""
    yield from _gateways(make_config, f"sqlite:///{tmp_path / 'state' / 'gateway.db'}")


@pytest.fixture
def backend_gateway(
    make_config: Callable[..., Path], database_url: str, secrets_env: dict[str, str]
) -> Iterator[Callable[..., Gateway]]:
    """The same on SQLite and on PostgreSQL: for claiming, leases and fan-out."""
    yield from _gateways(make_config, database_url)
