"""`tests.helpers.free_port`: a port a test may bind later, that the kernel will not take back.

Specification:
* the port lies outside the kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range),
  so no outgoing connection (a daemon retrying against that very port, TCP self-connect) can be
  given it as its source port before the caller binds it;
* the port is free: it binds on 127.0.0.1 without SO_REUSEADDR, and listens;
* one process is never handed the same port twice;
* when the ephemeral range leaves no room outside it, the candidate list is empty (the helper then
  falls back to bind(0)).
"""

from __future__ import annotations

import socket

import pytest

from tests.helpers import EPHEMERAL_RANGE_FILE, free_port, ports_outside_ephemeral_range


def test_free_port_is_outside_the_kernels_ephemeral_range_and_bindable() -> None:
    if not EPHEMERAL_RANGE_FILE.exists():
        pytest.skip(f"{EPHEMERAL_RANGE_FILE} missing: no kernel ephemeral range to stay out of")
    low, high = (int(n) for n in EPHEMERAL_RANGE_FILE.read_text().split())
    for _ in range(50):
        port = free_port()
        assert not low <= port <= high, f"{port} is in the ephemeral range {low}-{high}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen(1)


def test_free_port_never_hands_one_process_the_same_port_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_ports_are_taken_below_and_above_the_ephemeral_range_never_inside() -> None:
    assert ports_outside_ephemeral_range(32768, 60999) == [range(10000, 32768), range(61000, 65536)]
    assert ports_outside_ephemeral_range(49152, 65535) == [range(10000, 49152)]
    # A range reaching down to the well-known ports leaves only the ports above it.
    assert ports_outside_ephemeral_range(1024, 40000) == [range(40001, 65536)]
    assert ports_outside_ephemeral_range(1024, 65535) == []
