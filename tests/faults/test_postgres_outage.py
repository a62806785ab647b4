"""PostgreSQL stopped (as by a crash) and started again under mixed load, on a private cluster:
intake never notices — SMTP answers 250, webhooks 200, IMAP mail is taken — the spool fills,
nothing is quarantined, and once the database is back everything drains, once (DESIGN promise
1: the spool needs no database).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults import rig
from tests.faults.ledger import FaultRow, Ledger, count_markers, rows
from tests.faults.load import Mailbox, MixedLoad, Ports
from tests.faults.pgcluster import PostgresUnavailableError, PrivatePostgres, start_private_postgres
from tests.helpers import DaemonProcess, wait_for
from tests.imap.dovecot import Dovecot
from tests.twilio.conftest import FakeTwilioApi

OUTAGE = "postgres stopped (-m immediate)"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    try:
        cluster = start_private_postgres()
    except PostgresUnavailableError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"a private PostgreSQL cluster is required under CI=true: {exc}")
        pytest.skip(f"no private PostgreSQL cluster here (skipped outside CI): {exc}")
    yield cluster
    cluster.destroy()


def _worker_saw_outage(daemon: DaemonProcess) -> bool:
    try:
        return any(w.get("storage_down_since") for w in daemon.worker_status())
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_postgres_stopped_mid_load_intake_goes_on_and_everything_drains_once_it_returns(
    private_postgres: PrivatePostgres,
    make_config: Callable[..., Path],
    fake_twilio: FakeTwilioApi,
    shared_dovecot: Dovecot,
    mail_user: str,
    daemons: list[DaemonProcess],
    seed: int,
    record_faults: Callable[[list[FaultRow]], None],
) -> None:
    mailbox = (shared_dovecot, mail_user)
    config = rig.fault_config(
        make_config,
        relay_port=None,
        twilio_api=fake_twilio.url,
        mailbox=mailbox,
        overrides={"storage__url": private_postgres.url},
    )
    ledger = Ledger(run="pg")
    load = MixedLoad(ledger, Ports(*rig.ports_of(config)), Mailbox(*mailbox), seed=seed)
    daemon = DaemonProcess(config, env=rig.daemon_env())
    daemons.append(daemon.start())
    try:
        ledger.begin("postgres up")
        load.start()
        rig.pause(1.5)

        ledger.begin(OUTAGE)
        private_postgres.stop("immediate")
        wait_for(lambda: _worker_saw_outage(daemon), timeout=60, interval=0.2)
        depth_before = rig.spool_depth(daemon)
        rig.pause(3.0)
        # Intake went on: the spool grew while the worker deferred (never quarantined).
        assert rig.spool_depth(daemon) > depth_before
        assert daemon.status()["quarantine"] == 0

        ledger.begin("postgres started again")
        private_postgres.start()
        rig.pause(1.5)
        load.finish()
        rig.settle(daemon, ledger, private_postgres.url, mailbox)
    finally:
        load.abort()

    table = rows(
        ledger.items(),
        count_markers(private_postgres.url),
        {OUTAGE: "every attempt during the outage was acknowledged; spool grew, 0 quarantined"},
    )
    record_faults(table)
    (outage,) = [row for row in table if row.fault == OUTAGE]
    # "Intake keeps spooling and answering 250": not one attempt refused while it was down.
    assert outage.sent > 0
    assert outage.acknowledged == outage.sent and outage.retried == 0
    assert not list((daemon.state / "spool" / "quarantine").glob("*.msg"))
