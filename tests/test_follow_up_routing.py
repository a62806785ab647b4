"""What a later message does to its ticket's routing and clock (issue 18 item 1).

A follow-up that raises the ticket's severity has its routing, SLA and notifications decided
again and applied (due times only move earlier); one that does not raise it changes none of
them, and the decision trail says so. Real pipeline on SQLite, instant named."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from gateway.storage.models import DecisionRecord, OutboxRow, TicketEvent
from tests.helpers import AFTER_HOURS, Gateway, make_email

DANA = "dana@acme-clinic.example"


def _trail(gw: Gateway, code: str) -> list[str]:
    with gw.session() as session:
        return list(
            session.execute(
                select(DecisionRecord.text).where(DecisionRecord.code == code)
            ).scalars()
        )


def test_a_follow_up_that_raises_the_ticket_reroutes_it_and_one_that_does_not_changes_nothing(
    make_config: Callable[..., Path], pin_clock: Callable[[str], datetime]
) -> None:
    pin_clock(AFTER_HOURS)
    gw = Gateway(make_config())
    try:
        gw.ingest(
            make_email(
                "Label printer", "How do I change the label size?", sender=DANA, message_id="<a@x>"
            )
        )
        gw.drain()
        (opened,) = gw.tickets()
        assert opened.severity in ("normal", "low") and opened.queue != "on-call"

        gw.ingest(
            make_email(
                "Re: Label printer",
                "Now the whole system is down for all users, nobody can check patients in.",
                sender=DANA,
                message_id="<b@x>",
                In_Reply_To="<a@x>",
            )
        )
        gw.drain()
        (raised,) = gw.tickets()
        assert (raised.severity, raised.queue, raised.routing_rule) == (
            "urgent",
            "on-call",
            "AFTER_HOURS_URGENT",
        )
        assert raised.first_response_minutes == 60
        assert raised.first_response_due is not None and opened.first_response_due is not None
        assert raised.first_response_due <= opened.first_response_due
        assert [r.recipient for r in gw.outbox() if r.kind == "notify"] == ["oncall@example.com"]
        (raise_note,) = _trail(gw, "raised")
        assert f"raises {raised.reference} from {opened.severity} to urgent" in raise_note
        with gw.session() as session:
            (event,) = session.execute(
                select(TicketEvent).where(TicketEvent.kind == "routing")
            ).scalars()
        assert event.new == "on-call (AFTER_HOURS_URGENT)"

        gw.ingest(
            make_email(
                "Re: Label printer",
                "Thanks, any news?",
                sender=DANA,
                message_id="<c@x>",
                In_Reply_To="<b@x>",
            )
        )
        gw.drain()
        (kept,) = gw.tickets()
        fields = ("severity", "queue", "routing_rule", "first_response_due", "calendar")
        assert {f: getattr(kept, f) for f in fields} == {f: getattr(raised, f) for f in fields}
        with gw.session() as session:
            notifies = session.execute(
                select(OutboxRow).where(OutboxRow.kind == "notify")
            ).scalars()
            assert len(list(notifies)) == 1  # on-call is not told again
        (kept_note,) = _trail(gw, "kept")
        assert kept_note.startswith(f"{kept.reference} keeps its severity urgent, queue on-call")
    finally:
        gw.close()
