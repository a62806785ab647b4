"""A reply never opens a ticket of its own because its original is still in another worker's
batch (`[workers] processes` > 1): while an older spool entry is claimed by another worker and
not yet committed, a reply whose thread look-up finds nothing goes back to the spool, with no
attempt counted, and joins its original's ticket once that is written. A claim older than the
wait (a hung worker) holds nothing back. Real spool, real SQLite, two workers of one instance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.service import worker as worker_module
from gateway.service.worker import Worker
from tests.helpers import Gateway, make_email

ORIGINAL = "<orig@acme-clinic.example>"


def _original_and_reply(gw: Gateway) -> None:
    gw.ingest(make_email("Printer offline", "It stopped.", message_id=ORIGINAL))
    gw.ingest(make_email("Re: Printer offline", "Still down.", message_id="<reply@x>",
                         **{"In-Reply-To": ORIGINAL}))


def test_a_reply_waits_while_another_worker_holds_its_original_then_joins_its_ticket(
    make_config: Callable[..., Path],
) -> None:
    gw = Gateway(make_config())
    second = Worker(gw.box, index=1, run_outbox=False)
    try:
        _original_and_reply(gw)
        held = gw.worker._claim_batch(1)  # worker 0 has the original, not yet written
        assert second.step()  # worker 1 claims the reply meanwhile
        assert second.stats.held_replies == 1
        assert (second.stats.processed, second.stats.failures) == (0, 0)
        second.write_status(status := gw.settings.state_dir / "worker-1.json")
        assert json.loads(status.read_text())["held_replies"] == 1
        assert gw.tickets() == []
        assert len(gw.spool.pending()) == 2  # the reply is back, no attempt counted
        for entry in held:  # worker 0 goes on (here: hands back and drains both)
            gw.spool.release(entry)
        gw.drain()
        (ticket,) = gw.tickets()
        assert (ticket.subject, ticket.message_count) == ("Printer offline", 2)
    finally:
        second.spool.close()
        second.engine.dispose()
        gw.close()


def test_a_claim_older_than_the_wait_holds_no_reply_back(
    make_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that hung on its batch delays replies at most REPLY_WAIT_SECONDS; here the
    wait is 0, so every claim is too old and the reply is written at once, as a new ticket."""
    monkeypatch.setattr(worker_module, "REPLY_WAIT_SECONDS", 0.0)
    gw = Gateway(make_config())
    second = Worker(gw.box, index=1, run_outbox=False)
    try:
        _original_and_reply(gw)
        held = gw.worker._claim_batch(1)
        assert second.step()
        assert (second.stats.held_replies, second.stats.processed) == (0, 1)
        for entry in held:
            gw.spool.release(entry)
        gw.drain()
        assert sorted(t.subject for t in gw.tickets()) == ["Printer offline", "Re: Printer offline"]
    finally:
        second.spool.close()
        second.engine.dispose()
        gw.close()


def test_one_worker_never_holds_a_reply_back_for_its_own_batch(
    make_config: Callable[..., Path],
) -> None:
    """A reply to a message we never saw, drained by one worker, is a new ticket at once."""
    gw = Gateway(make_config())
    try:
        gw.ingest(make_email("Re: something", "About your mail.", message_id="<r@x>",
                             **{"In-Reply-To": "<never-seen@elsewhere.example>"}))
        gw.ingest(make_email("Printer offline", "It stopped.", message_id="<o@x>"))
        assert gw.drain() == 2
        assert gw.worker.stats.held_replies == 0
        assert len(gw.tickets()) == 2
    finally:
        gw.close()
