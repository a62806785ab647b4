"""A confirmed (paid) emergency runs on emergency.toml's response calendar with its own
first-response target (issue 17, item 2): confirmed on a Sunday, it is due that Sunday, not on
Monday after the urgent level's business hours open again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from gateway.storage.queries import as_utc
from tests.billing.conftest import Desk, email
from tests.helpers import SUNDAY_MIDDAY


def test_an_emergency_accepted_on_sunday_is_due_within_sixty_minutes(
    desk: Desk, pin_clock: Callable[[str], datetime]
) -> None:
    pin_clock(SUNDAY_MIDDAY)
    sunday = datetime.fromisoformat(SUNDAY_MIDDAY)
    accepted = desk.mail(email(message_id="<sun@a>"), sunday)
    ticket = desk.ticket(accepted.reference or "")
    assert ticket.emergency_acknowledged and ticket.calendar == "24/7"
    assert as_utc(ticket.first_response_due) == sunday + timedelta(minutes=60)


def test_an_emergency_confirmed_on_sunday_is_due_within_sixty_minutes_of_the_confirmation(
    desk: Desk, pin_clock: Callable[[str], datetime]
) -> None:
    pin_clock(SUNDAY_MIDDAY)
    sunday = datetime.fromisoformat(SUNDAY_MIDDAY)
    asked = desk.mail(email(acknowledged=False, message_id="<ask@a>"), sunday)
    ref = asked.reference or ""
    (prompt,) = [row for row in desk.outbox(ref) if row.kind == "confirm-charge"]
    confirmed_at = sunday + timedelta(minutes=10)
    desk.mail(
        email(
            "Re: confirm",
            "Confirm.",
            acknowledged=False,
            message_id="<yes@a>",
            In_Reply_To=f"<{prompt.header_message_id}>",
        ),
        confirmed_at,
    )
    ticket = desk.ticket(ref)
    assert ticket.emergency_acknowledged and not ticket.held
    assert as_utc(ticket.first_response_due) == confirmed_at + timedelta(minutes=60)
    assert "on calendar 24/7: first response 60 min" in str(desk.show(ref))
