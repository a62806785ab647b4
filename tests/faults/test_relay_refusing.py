"""The outbound relay refusing mail, through every kind of answer a relay gives: temporary
refusals (451 at DATA, 450 at RCPT) are retried with backoff and nothing is lost or sent twice
once the relay accepts; permanent ones (554 at DATA, 550 at RCPT) mark the reply failed with the
relay's reason after one attempt, and it is never sent again (DESIGN: outgoing mail is delivered
at least once; a dead letter says why).

Intake is unaffected throughout: every message the gateway acknowledged has one ticket.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.faults import rig
from tests.faults.ledger import FaultRow, Ledger, count_markers, query, rows
from tests.faults.load import email_for, send_smtp
from tests.helpers import BUSINESS_HOURS, DaemonProcess, free_port, wait_for
from tests.twilio.conftest import FakeTwilioApi


@dataclass
class SwitchableRelay:
    """A real SMTP server (aiosmtpd) whose answers the test switches: at RCPT or at DATA."""

    rcpt_reply: str = "250 OK"
    data_reply: str = "250 OK"
    # (Message-ID, reply) of every DATA the relay answered, and recipients refused at RCPT.
    data: list[tuple[str, str]] = field(default_factory=list)
    refused_rcpt: int = 0
    port: int = field(default_factory=free_port)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, *, rcpt: str = "250 OK", data: str = "250 OK") -> None:
        with self.lock:
            self.rcpt_reply, self.data_reply = rcpt, data

    def accepted(self) -> list[str]:
        with self.lock:
            return [mid for mid, reply in self.data if reply.startswith("250")]

    def attempts(self, message_id: str) -> int:
        with self.lock:
            return sum(mid == message_id for mid, _ in self.data)

    def start(self) -> Controller:
        relay = self

        class Handler:
            async def handle_RCPT(
                self, server: Any, session: Any, envelope: Any, address: str, options: Any
            ) -> str:
                with relay.lock:
                    reply = relay.rcpt_reply
                    if not reply.startswith("250"):
                        relay.refused_rcpt += 1
                        return reply
                envelope.rcpt_tos.append(address)
                return reply

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message_id = str(message_from_bytes(envelope.original_content)["Message-ID"])
                with relay.lock:
                    relay.data.append((message_id.strip("<>"), relay.data_reply))
                    return relay.data_reply

        controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        controller.start()
        return controller


@dataclass(frozen=True)
class Reply:
    message_id: str
    in_reply_to: str
    status: str
    attempts: int
    reason: str


def replies(url: str) -> list[Reply]:
    sql = (
        "SELECT header_message_id, in_reply_to, status, attempts, status_reason "
        "FROM outbox WHERE channel = 'email' ORDER BY id"
    )
    return [Reply(m, r or "", s, a, why or "") for m, r, s, a, why in query(url, sql)]


@pytest.mark.slow
def test_a_relay_refusing_mail_delays_or_fails_replies_but_never_loses_or_doubles_one(
    make_config: Callable[..., Path],
    fake_twilio: FakeTwilioApi,
    daemons: list[DaemonProcess],
    record_faults: Callable[[list[FaultRow]], None],
    pin_clock: Callable[[str], datetime],
) -> None:
    pin_clock(BUSINESS_HOURS)
    relay = SwitchableRelay()
    controller = relay.start()
    try:
        config = rig.fault_config(make_config, relay_port=relay.port, twilio_api=fake_twilio.url)
        url = rig.database_url(config)
        smtp_port, _ = rig.ports_of(config)
        daemon = DaemonProcess(config, env=rig.daemon_env())
        daemons.append(daemon.start())
        ledger = Ledger(run="relay")
        notes: dict[str, str] = {}

        def send(n: int) -> list[str]:
            """n messages in; the markers of those the gateway acknowledged (all of them)."""
            markers = []
            for _ in range(n):
                item = ledger.new("smtp")
                ledger.attempt(item, send_smtp(smtp_port, email_for(item)))
                assert item.acknowledged
                markers.append(item.marker)
            return markers

        def replies_to(markers: list[str]) -> list[Reply]:
            found = [r for r in replies(url) if any(m in r.in_reply_to for m in markers)]
            return found if len(found) == len(markers) else []

        # -- temporary refusals: retried with backoff, never given up on, never doubled --------
        ledger.begin("relay: 451 at DATA, then 450 at RCPT, then accepts")
        relay.answer(data="451 4.3.0 Try again later")
        first = send(4)
        wait_for(
            lambda: (
                (found := replies_to(first))
                and all(r.attempts >= 2 and r.status == "pending" for r in found)
            ),
            timeout=60,
            interval=0.3,
        )
        assert all("451" in r.reason for r in replies_to(first))
        relay.answer(rcpt="450 4.2.1 Mailbox busy, try later")
        before = {r.message_id: r.attempts for r in replies_to(first)}
        wait_for(
            lambda: all(
                r.attempts > before[r.message_id] or r.status in ("failed", "sent")
                for r in replies_to(first)
            ),
            timeout=60,
            interval=0.3,
        )
        # A temporary refusal of the recipient is temporary too: retried, not a dead letter.
        assert {r.status for r in replies_to(first)} <= {"pending", "sending"}, replies_to(first)
        assert relay.refused_rcpt > 0 and not relay.accepted()
        relay.answer()
        wait_for(
            lambda: {r.status for r in replies_to(first)} == {"sent"}, timeout=60, interval=0.3
        )
        sent = [r.message_id for r in replies_to(first)]
        notes["relay: 451 at DATA, then 450 at RCPT, then accepts"] = (
            f"{len(sent)} replies retried {sum(before.values())}+ times, then sent once each"
        )

        # -- permanent refusals: one attempt, failed with the relay's reason, never again ------
        ledger.begin("relay: 554 at DATA, 550 at RCPT")
        relay.answer(data="554 5.7.1 Message refused")
        data_refused = send(2)
        wait_for(
            lambda: {r.status for r in replies_to(data_refused)} == {"failed"},
            timeout=60,
            interval=0.3,
        )
        relay.answer(rcpt="550 5.1.1 No such user")
        rcpt_refused = send(2)
        wait_for(
            lambda: {r.status for r in replies_to(rcpt_refused)} == {"failed"},
            timeout=60,
            interval=0.3,
        )
        relay.answer()
        send(1)  # the relay accepts again: the outbox loop has run past the failed ones
        wait_for(lambda: len(relay.accepted()) == len(sent) + 1, timeout=60, interval=0.3)
        failed = replies_to(data_refused) + replies_to(rcpt_refused)
        assert all("554" in r.reason for r in replies_to(data_refused))
        assert all("550" in r.reason for r in replies_to(rcpt_refused))
        assert all(relay.attempts(r.message_id) == 1 for r in replies_to(data_refused))
        notes["relay: 554 at DATA, 550 at RCPT"] = (
            f"{len(failed)} replies failed after one attempt, with the relay's reason"
        )

        rig.settle(daemon, ledger, url, None)
    finally:
        controller.stop()

    # Nothing sent twice, nothing failed sent anyway; every reply the relay took is one row.
    accepted = relay.accepted()
    assert len(accepted) == len(set(accepted))
    assert not set(accepted) & {r.message_id for r in failed}
    assert set(sent) <= set(accepted)
    record_faults(rows(ledger.items(), count_markers(url), notes))
