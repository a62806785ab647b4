"""The after-hours flag an emergency is quoted and billed with ("Additional fees may apply to
after hours service"): outside the sample business calendar (New York, Mon-Fri 08:00-18:00,
holidays) by its local wall clock, DST change days included. Frozen instants only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.config.loader import load
from gateway.config.schema import CalendarDef, CalendarsFile, EmergencyFile
from gateway.emergency.rules import quote
from gateway.policy.calendars import build_calendars
from gateway.policy.plans import Plans
from gateway.storage.queries import as_utc
from tests.billing.conftest import NY, TUESDAY_10, Desk, email
from tests.helpers import ROOT

SETTINGS = load(ROOT / "config")
GROWTH = Plans.build(SETTINGS.plans).get("growth")
CALENDARS = build_calendars(SETTINGS.calendars)


@pytest.mark.parametrize(
    ("at", "after_hours"),
    [
        (datetime(2026, 11, 17, 19, 30, tzinfo=NY), True),  # a weekday evening
        (datetime(2026, 11, 18, 3, 0, tzinfo=NY), True),  # the middle of the night
        (datetime(2026, 11, 21, 11, 0, tzinfo=NY), True),  # Saturday
        (datetime(2026, 11, 26, 10, 0, tzinfo=NY), True),  # Thanksgiving, a configured holiday
        (TUESDAY_10, False),  # 10:00 on a Tuesday
        (datetime(2026, 11, 17, 17, 59, tzinfo=NY), False),
        (datetime(2026, 11, 17, 18, 0, tzinfo=NY), True),  # closing time is after hours
        # The Monday after spring-forward (EDT, UTC-4): 12:30Z is 08:30 (open; it would be 07:30
        # on last week's offset) and 22:30Z is 18:30 (closed; 17:30 on last week's).
        (datetime(2026, 3, 9, 12, 30, tzinfo=UTC), False),
        (datetime(2026, 3, 9, 22, 30, tzinfo=UTC), True),
        # The Monday after fall-back (EST, UTC-5): the other way round.
        (datetime(2026, 11, 2, 12, 30, tzinfo=UTC), True),
        (datetime(2026, 11, 2, 22, 30, tzinfo=UTC), False),
    ],
)
def test_the_after_hours_flag_and_surcharge_follow_the_business_calendar(
    at: datetime, after_hours: bool
) -> None:
    quoted = quote(GROWTH, SETTINGS.emergency, CALENDARS, at)
    assert quoted.after_hours is after_hours, quoted.after_hours_reason
    assert quoted.total_minor == (35000 if after_hours else 25000)
    assert ("after-hours surcharge" in quoted.text()) is after_hours


@pytest.mark.parametrize(
    ("at", "after_hours"),
    [
        (datetime(2026, 3, 8, 12, 30, tzinfo=UTC), False),  # 08:30 EDT on spring-forward day
        (datetime(2026, 3, 8, 11, 30, tzinfo=UTC), True),  # 07:30 EDT (08:30 had it been EST)
        (datetime(2026, 11, 1, 12, 30, tzinfo=UTC), True),  # 07:30 EST on fall-back day
        (datetime(2026, 11, 1, 13, 0, tzinfo=UTC), False),  # 08:00 EST: opening
        (datetime(2026, 11, 1, 22, 59, tzinfo=UTC), False),  # 17:59 EST
        (datetime(2026, 11, 1, 23, 0, tzinfo=UTC), True),  # 18:00 EST (17:00 had it been EDT)
    ],
)
def test_on_the_dst_change_days_themselves_the_local_wall_clock_decides(
    at: datetime, after_hours: bool
) -> None:
    daily = CalendarsFile(
        calendar={
            "daily": CalendarDef(timezone="America/New_York", hours={"mon-sun": ("08:00-18:00",)})
        }
    )
    config = EmergencyFile(after_hours_calendar="daily")
    quoted = quote(GROWTH, config, build_calendars(daily), at)
    assert quoted.after_hours is after_hours, quoted.after_hours_reason


def test_without_an_after_hours_calendar_nothing_is_after_hours() -> None:
    quoted = quote(GROWTH, EmergencyFile(), CALENDARS, datetime(2026, 11, 21, 3, 0, tzinfo=NY))
    assert not quoted.after_hours and quoted.total_minor == 25000
    assert quoted.after_hours_reason == "no after-hours calendar is configured"


def test_an_emergency_at_half_past_seven_in_the_evening_is_billed_with_the_surcharge(
    desk: Desk,
) -> None:
    evening = datetime(2026, 11, 17, 19, 30, tzinfo=NY)
    desk.mail(email(), evening)
    (incident,) = desk.incidents()
    assert incident.after_hours and incident.surcharge_minor == 10000
    assert as_utc(incident.opened_at) == evening
    assert incident.after_hours_reason == (
        "19:30 Tue 2026-11-17 America/New_York is outside business hours (mon-fri 08:00-18:00) "
        "on calendar business"
    )
    (charge,) = desk.ledger()
    assert (charge.kind, charge.amount_minor) == ("charge", 35000)
    assert "after-hours surcharge" in charge.reason
