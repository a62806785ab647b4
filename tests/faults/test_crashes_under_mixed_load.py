"""kill -9 at every named crash point and at random moments, under mixed load over SMTP, IMAP
(Dovecot) and signed Twilio SMS webhooks: every message a sender saw acknowledged has exactly
one ticket, every other message at most one (DESIGN promises 1 and 2).

One daemon (its state, spool and database survive every crash) is crashed at named points of
`gateway.intake.faults.POINTS` — a point kills the whole process group the first time the load
reaches it — and killed with SIGKILL at seeded random moments; senders retry what they did not see
acknowledged (a seeded fifth of them give up instead), IMAP mail simply waits in the mailbox. At
the end a clean daemon drains everything and the database is counted by marker.

On SQLite (the embedded default, one worker) the daemon is crashed at every point but one; on
PostgreSQL, with two worker processes racing for the spool and the dedup keys, it is stopped
gracefully under load, crashed with a whole batch written but not committed, and killed at
seeded random moments.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from email import message_from_bytes
from functools import partial
from pathlib import Path

import pytest

from gateway.intake.faults import POINTS
from tests.faults import rig
from tests.faults.ledger import FaultRow, Ledger, count_markers, rows
from tests.faults.load import Mailbox, MixedLoad, Ports
from tests.helpers import CapturingRelay, DaemonProcess
from tests.imap.dovecot import Dovecot
from tests.twilio.conftest import FakeTwilioApi

# backend -> (crash points, random kills, graceful restart first). Daemon restarts dominate the
# run time (each one imports the classifier stack again), so the points are shared out: every
# one is crashed once, on the backend where it matters most.
PLANS: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "sqlite": (tuple(p for p in POINTS if p != "before-commit"), 0, False),
    "postgresql": (("before-commit",), 2, True),
}


def test_every_named_crash_point_is_crashed_on_one_backend() -> None:
    """A point added to gateway/intake/faults.py without a place in PLANS would go untested."""
    assert sorted(p for points, _, _ in PLANS.values() for p in points) == sorted(POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(PLANS))
def test_kill_9_at_crash_points_and_random_moments_loses_and_doubles_nothing(
    backend: str,
    request: pytest.FixtureRequest,
    make_config: Callable[..., Path],
    relay: CapturingRelay,
    fake_twilio: FakeTwilioApi,
    shared_dovecot: Dovecot,
    mail_user: str,
    daemons: list[DaemonProcess],
    seed: int,
    record_faults: Callable[[list[FaultRow]], None],
) -> None:
    points, random_kills, graceful = PLANS[backend]
    overrides: dict[str, object] = {}
    if backend == "postgresql":
        overrides = {"storage__url": request.getfixturevalue("pg_url"), "workers__processes": 2}
    mailbox = (shared_dovecot, mail_user)
    config = rig.fault_config(
        make_config,
        relay_port=relay.port,
        twilio_api=fake_twilio.url,
        mailbox=mailbox,
        overrides=overrides,
    )
    url = rig.database_url(config)
    rng = random.Random(seed)
    notes: dict[str, str] = {}
    ledger = Ledger(run=backend[:2])
    load = MixedLoad(ledger, Ports(*rig.ports_of(config)), Mailbox(*mailbox), seed=seed)

    def graceful_restart() -> None:  # SIGTERM under load: sessions in progress finish
        daemon = DaemonProcess(config, env=rig.daemon_env())
        daemons.append(daemon.start())
        rig.pause(1.5)
        daemon.stop()

    def kill_after(delay: float) -> None:
        daemon = DaemonProcess(config, env=rig.daemon_env())
        daemons.append(daemon.start())
        rig.pause(delay)
        daemon.kill9()

    phases: list[tuple[str, Callable[[], object]]] = []
    if graceful:
        phases.append((f"graceful restart (SIGTERM) [{backend}]", graceful_restart))
    for point in points:
        phases.append(
            (f"crash at {point} [{backend}]", partial(rig.crash_at, config, point, daemons))
        )
    for n in range(1, random_kills + 1):
        delay = rng.uniform(0.3, 3.0)
        phases.append((f"kill -9 #{n} at +{delay:.2f}s [{backend}]", partial(kill_after, delay)))
    try:
        tmp = rig.spool_dir(config) / "tmp"
        for label, inject in phases:
            ledger.begin(label)
            load.start()  # (once) the load runs from the first fault to the end
            inject()
            # What a crash leaves in spool/tmp was never acknowledged; recover() deletes it.
            notes[label] = f"{len(list(tmp.iterdir()))} unpublished file(s) left in spool/tmp"
        ledger.begin(f"restart (no fault) [{backend}]")
        final = DaemonProcess(config, env=rig.daemon_env())
        daemons.append(final.start())
        load.finish()
        rig.settle(final, ledger, url, mailbox)
    finally:
        load.abort()

    replies = [message_from_bytes(raw)["Message-ID"] for raw in relay.messages]
    notes[ledger.faults()[-1]] = f"{len(set(replies))} acknowledgements relayed, none twice"
    table = rows(ledger.items(), count_markers(url), notes)
    record_faults(table)
    if "mid-spool-write" in points:  # the point is really mid-write: it left a file behind
        assert not notes[f"crash at mid-spool-write [{backend}]"].startswith("0 ")
    assert not list(tmp.iterdir())  # and every such file was cleaned up
    # Every fault saw traffic of its own (else it proved nothing), and faults did hit senders.
    assert [row.fault for row in table] == ledger.faults()
    assert sum(row.retried + row.unacknowledged for row in table) > 0
    assert shared_dovecot.count(mail_user) == 0  # the mailbox was emptied: nothing stuck there
    # Replies are sent at least once; within this run (the 5-minute lease of a reply whose send
    # was cut by a crash has not run out) never twice.
    assert len(replies) == len(set(replies))
