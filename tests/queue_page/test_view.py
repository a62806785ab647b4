"""What a row shows, as pure functions of a ticket and a frozen clock: the SLA countdown and its
colour, the badges, the duration format the page's script ticks in."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from gateway.api.queue_page import (
    QueuePageSettings,
    badges,
    countdown_text,
    format_duration,
    queue_row,
    sla_clock,
)
from gateway.storage.models import Ticket
from tests.queue_page.conftest import LEVELS, T0

SETTINGS = QueuePageSettings(amber_fraction=0.25, amber_minutes=30)


def ticket(**fields: Any) -> Ticket:
    values: dict[str, Any] = {
        "id": 1,
        "reference": "T-000001",
        "status": "new",
        "severity": "urgent",
        "severity_rank": 0,
        "channel": "email",
        "account_id": "acme-clinic",
        "plan": "growth",
        "subject": "Everything is down",
        "created_at": T0 - timedelta(hours=1),
        "updated_at": T0,
        "first_response_due": None,
        "resolution_due": None,
        "first_response_at": None,
        "waiting_since": None,
        "jump_queue": False,
        "jump_reason": "",
        "held": False,
        "hold_reason": "",
        "emergency": False,
        "emergency_acknowledged": False,
    }
    values.update(fields)
    return Ticket(**values)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0m 00s"),
        (59, "0m 59s"),
        (61, "1m 01s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (3 * 3600 + 7 * 60 + 59, "3h 07m"),
        (86400 * 2 + 3 * 3600, "2d 03h"),
    ],
)
def test_durations_read_as_days_hours_minutes_seconds(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_breached_countdown_says_how_long_it_is_overdue() -> None:
    assert countdown_text(-125) == "overdue 2m 05s"
    assert countdown_text(0) == "overdue 0m 00s"


def test_the_first_response_clock_runs_until_the_first_response_is_sent() -> None:
    # Created an hour ago, due in 23 hours: 23/24 of the span left, far from amber.
    clock = sla_clock(ticket(first_response_due=T0 + timedelta(hours=23)), T0, SETTINGS)
    assert (clock.target, clock.state, clock.text) == ("first response", "ok", "23h 00m")
    assert clock.remaining_seconds == 23 * 3600


def test_a_countdown_turns_amber_when_under_the_fraction_of_its_span_is_left() -> None:
    # Span 10 h (created 8 h ago, due in 2 h): 20 % left < 25 %, though 2 h > 30 minutes.
    t = ticket(
        created_at=T0 - timedelta(hours=8),
        first_response_due=T0 + timedelta(hours=2),
    )
    assert sla_clock(t, T0, SETTINGS).state == "amber"
    assert sla_clock(t, T0 - timedelta(minutes=31), SETTINGS).state == "ok"  # 25.5 % left


def test_a_countdown_turns_amber_under_the_minutes_threshold_even_on_a_long_span() -> None:
    t = ticket(
        created_at=T0 - timedelta(days=3),
        first_response_due=T0 + timedelta(minutes=29),
    )
    clock = sla_clock(t, T0, QueuePageSettings(amber_fraction=0.0, amber_minutes=30))
    assert clock.state == "amber" and clock.amber_seconds == 30 * 60


def test_a_countdown_turns_red_at_the_due_time_and_stays_red() -> None:
    t = ticket(first_response_due=T0)
    at_due = sla_clock(t, T0, SETTINGS)
    later = sla_clock(t, T0 + timedelta(minutes=5), SETTINGS)
    assert (at_due.state, later.state) == ("red", "red")
    assert later.text == "overdue 5m 00s"


def test_after_the_first_response_the_resolution_clock_is_shown() -> None:
    t = ticket(
        first_response_due=T0 - timedelta(hours=2),
        first_response_at=T0 - timedelta(minutes=50),
        resolution_due=T0 + timedelta(hours=20),
    )
    clock = sla_clock(t, T0, SETTINGS)
    assert (clock.target, clock.state) == ("resolution", "ok")


def test_waiting_on_the_customer_shows_the_resolution_clock_paused() -> None:
    t = ticket(
        first_response_at=T0 - timedelta(minutes=50),
        resolution_due=T0 - timedelta(hours=1),
        waiting_since=T0 - timedelta(hours=3),
    )
    clock = sla_clock(t, T0, SETTINGS)
    assert clock.state == "paused" and clock.remaining_seconds is None


def test_a_ticket_without_due_times_shows_no_countdown() -> None:
    assert sla_clock(ticket(), T0, SETTINGS).state == "none"


def test_badges_name_emergency_awaiting_acknowledgement_jump_and_held() -> None:
    t = ticket(
        emergency=True,
        emergency_acknowledged=False,
        jump_queue=True,
        jump_reason="outage for all users",
        held=True,
        hold_reason="awaiting emergency acknowledgement",
    )
    assert [(b.code, b.text, b.title) for b in badges(t)] == [
        ("emergency", "EMERGENCY", "emergency support (billed per incident)"),
        ("ack", "AWAITING ACK", "the billing acknowledgement is not recorded yet"),
        ("jump", "JUMP", "outage for all users"),
        ("held", "HELD", "awaiting emergency acknowledgement"),
    ]
    acknowledged = ticket(emergency=True, emergency_acknowledged=True)
    assert [b.code for b in badges(acknowledged)] == ["emergency"]
    assert badges(ticket()) == ()


def test_the_level_colour_follows_the_live_scale_and_falls_back_to_the_stored_rank() -> None:
    on_scale = queue_row(1, ticket(severity="high", severity_rank=3), T0, LEVELS, SETTINGS)
    off_scale = queue_row(1, ticket(severity="sev9", severity_rank=2), T0, LEVELS, SETTINGS)
    assert (on_scale.level_rank, off_scale.level_rank) == (1, 2)


def test_settings_refuse_nonsense_thresholds() -> None:
    with pytest.raises(ValueError, match="amber_fraction"):
        QueuePageSettings(amber_fraction=1.5)
    with pytest.raises(ValueError, match="refresh_seconds"):
        QueuePageSettings(refresh_seconds=0)
