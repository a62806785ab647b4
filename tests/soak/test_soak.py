"""Two minutes of steady mixed load against the real daemon — SMTP, `gateway ingest` (the MTA
pipe) and signed Twilio SMS — sampled every 5 s: the daemon's and workers' RSS and open file
descriptors, spool depth and acceptance latency must be flat (tests/soak/load.py says what flat
means), the spool must stay shallow, and every accepted message must end as one intake. The
series and the verdicts are printed (run with -s). The 30-minute run is `bench/soak.py`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import CapturingRelay, DaemonProcess
from tests.soak.load import PUBLIC, TOKEN, Rates, Soak, header, judge, row, summary
from tests.twilio.conftest import FakeTwilioApi

DURATION = 120.0
SPOOL_BOUND = 100  # ~15 s of this load: the worker must keep up, not fall ever further behind


@pytest.fixture
def twilio_api() -> Iterator[FakeTwilioApi]:
    api = FakeTwilioApi()
    yield api
    api.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_minutes_of_mixed_load_leave_memory_descriptors_spool_and_latency_flat(
    make_config: Callable[..., Path],
    relay: CapturingRelay,
    twilio_api: FakeTwilioApi,
    daemons: list[DaemonProcess],
) -> None:
    config = make_config(
        outbound__enabled=True,
        outbound__relay_port=relay.port,
        webhooks__public_url=PUBLIC,
        webhooks__account_sid="AC" + "0" * 32,
        webhooks__from_number="+16175550199",
        webhooks__rest_base_url=twilio_api.url,
    )
    daemon = DaemonProcess(config, env={"GATEWAY_TWILIO_AUTH_TOKEN": TOKEN})
    daemons.append(daemon)
    daemon.start()
    soak = Soak(daemon, Rates(smtp=4.0, pipe=0.2, sms=2.0), interval=5.0)
    print("\n" + header())
    soak.run(DURATION, on_sample=lambda s: print(row(s), flush=True))
    ended = soak.drain()
    verdicts = judge(soak.samples)
    print(summary(soak, verdicts))
    print(
        f"intakes {ended}; relay got {len(relay.messages)} mails, "
        f"Twilio API {len(twilio_api.texts())} texts"
    )

    accepted = sum(soak.counters.accepted.values())
    assert soak.errors == []
    assert soak.counters.refused == {}
    assert accepted >= 0.8 * DURATION * (4.0 + 0.2 + 2.0)  # the load really ran at its rate
    assert ended == accepted  # each accepted message is exactly one intake: none lost
    assert daemon.status()["quarantine"] == 0
    assert max(s.spool_depth for s in soak.samples) <= SPOOL_BOUND
    assert [v for v in verdicts if not v.flat] == []
