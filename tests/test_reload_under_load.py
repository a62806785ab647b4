"""Reload under load: while 2,000 messages stream in over SMTP, a routing change and SIGHUP take
effect between messages; every message is ticketed once; a broken file changes nothing."""

from __future__ import annotations

import json
import smtplib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, Gateway, make_email, wait_for

TOTAL = 2000
SENDERS = 4


@pytest.mark.slow
def test_a_reload_under_load_applies_between_messages_and_loses_or_doubles_nothing(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    (config / "routing.toml").write_text('default_queue = "before"\n')
    daemon = DaemonProcess(config).start()
    sent: list[int] = []
    lock = threading.Lock()

    def sender(offset: int) -> None:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=60) as client:
            for i in range(offset, TOTAL, SENDERS):
                raw = make_email(
                    subject=f"load {i}",
                    body=f"message number {i}",
                    sender=f"user{i % 50}@load.example",
                    message_id=f"<load{i}@load.example>",
                )
                client.sendmail(f"user{i % 50}@load.example", ["support@example.com"], raw)
                with lock:
                    sent.append(i)

    try:
        threads = [threading.Thread(target=sender, args=(k,)) for k in range(SENDERS)]
        for t in threads:
            t.start()
        wait_for(lambda: len(sent) >= TOTAL // 3, timeout=120)
        (config / "routing.toml").write_text('default_queue = "after"\n')
        daemon.sighup()
        wait_for(lambda: all(w["config_generation"] == 2 for w in daemon.worker_status()))
        with lock:
            sent_before = set(sent)
        # A broken file mid-stream: rejected, the running config stays.
        (config / "routing.toml").write_text("default_queue = \n")
        daemon.sighup()
        wait_for(lambda: all(w["config_error"] for w in daemon.worker_status()))
        for t in threads:
            t.join(timeout=300)
        assert len(sent) == TOTAL
        wait_for(lambda: daemon.status()["spool_depth"] == 0, timeout=300)
        wait_for(lambda: sum(w["processed"] for w in daemon.worker_status()) >= TOTAL, timeout=60)
        assert daemon.proc is not None and daemon.proc.poll() is None, "daemon kept running"
        assert daemon.status()["quarantine"] == 0
    finally:
        daemon.stop()

    # Read the result with a valid config (the broken file is still in place).
    (config / "routing.toml").write_text('default_queue = "after"\n')
    gw = Gateway(config)
    try:
        tickets = gw.tickets()
        intakes = gw.intakes()
    finally:
        gw.close()
    numbers = [int(t.subject.split()[1]) for t in tickets]
    assert len(numbers) == TOTAL and len(set(numbers)) == TOTAL, "every message ticketed once"
    assert all(i.outcome == "ticket" for i in intakes)
    queue_of = {int(t.subject.split()[1]): t.queue for t in tickets}
    after = [i for i in range(TOTAL) if i not in sent_before]
    assert after, "some messages were sent after the reload was confirmed"
    assert {queue_of[i] for i in after} == {"after"}
    assert set(queue_of.values()) <= {"before", "after"}
    print(json.dumps({"sent_before_reload": len(sent_before), "after": len(after)}))
