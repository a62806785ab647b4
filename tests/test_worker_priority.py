"""Workers yield the CPU to the listeners: acceptance is the promise a sender waits on, the
drain behind it is not. `[workers] nice` is added to each worker's niceness at its start."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from tests.helpers import DaemonProcess
from tests.test_config import problems_of


def test_workers_run_at_the_configured_niceness_above_the_listeners(
    make_config: Callable[..., Path], daemons: list[DaemonProcess]
) -> None:
    daemon = DaemonProcess(make_config(workers__nice=7)).start()
    daemons.append(daemon)
    assert daemon.proc is not None
    (worker,) = daemon.status()["workers"]
    listeners = os.getpriority(os.PRIO_PROCESS, daemon.proc.pid)
    assert os.getpriority(os.PRIO_PROCESS, worker) == min(19, listeners + 7)


def test_a_niceness_outside_0_to_19_is_named_with_file_and_key(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    path = config / "gateway.toml"
    for bad in ("-5", "20"):
        path.write_text(re.sub(r"(?m)^nice = \S+", f"nice = {bad}", path.read_text()))
        assert any("gateway.toml" in p and "workers.nice: must be between 0 and 19" in p
                   for p in problems_of(config)), bad
