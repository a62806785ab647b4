"""Specification of the after-hours flag (gateway/emergency/after_hours.py) on the shipped
`business` calendar: America/New_York, Monday to Friday 08:00-18:00, closed on the listed US
holidays.

Every instant is written out (a frozen clock). Local times are New York wall-clock times.
2026-11-24 is a Tuesday; Thanksgiving, 2026-11-26, is a configured holiday; DST starts on Sunday
2026-03-08 (02:00 EST -> 03:00 EDT) and ends on Sunday 2026-11-01 (02:00 EDT -> 01:00 EST).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.schema import CalendarsFile
from gateway.config.validate import build
from gateway.emergency.after_hours import after_hours, describe_hours
from gateway.policy.calendars import Calendar, build_calendars, is_open

ROOT = Path(__file__).resolve().parents[1]
NY = ZoneInfo("America/New_York")
UTC = dt.UTC


def _shipped_calendars() -> Mapping[str, Calendar]:
    path = ROOT / "config" / "calendars.toml"
    with path.open("rb") as fh:
        calendars, problems = build(CalendarsFile, tomllib.load(fh), path)
    assert calendars is not None, problems
    return build_calendars(calendars)


CALENDARS = _shipped_calendars()
BUSINESS = CALENDARS["business"]


def ny(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=NY)


def flag(at: dt.datetime) -> bool:
    return after_hours(at, BUSINESS, "business").after_hours


def test_evening_of_a_weekday_is_after_hours_and_says_when_and_which_hours() -> None:
    result = after_hours(ny(2026, 11, 24, 19, 30), BUSINESS, "business")
    assert result.after_hours
    assert result.reason == (
        "19:30 Tue 2026-11-24 America/New_York is outside business hours (mon-fri 08:00-18:00)"
        " on calendar business"
    )


@pytest.mark.parametrize(
    ("at", "why"),
    [
        (ny(2026, 11, 24, 3, 0), "03:00 Tue 2026-11-24 America/New_York is outside"),
        (ny(2026, 11, 28, 11, 0), "11:00 Sat 2026-11-28 America/New_York is outside"),
        (ny(2026, 11, 29, 11, 0), "11:00 Sun 2026-11-29 America/New_York is outside"),
        (ny(2026, 11, 24, 18, 0), "18:00 Tue 2026-11-24 America/New_York is outside"),
    ],
    ids=["03:00-weekday", "saturday", "sunday", "18:00-closing-instant"],
)
def test_night_weekend_and_closing_instant_are_after_hours(at: dt.datetime, why: str) -> None:
    result = after_hours(at, BUSINESS, "business")
    assert result.after_hours
    assert result.reason.startswith(why)


def test_a_configured_holiday_is_after_hours_all_day_and_names_the_holiday() -> None:
    for hour in (0, 8, 10, 17, 23):
        result = after_hours(ny(2026, 11, 26, hour, 0), BUSINESS, "business")
        assert result.after_hours
        assert result.reason.startswith("2026-11-26 is a holiday on calendar business")
    # The day after the holiday is an ordinary Friday.
    assert not flag(ny(2026, 11, 27, 10, 0))


def test_ten_on_a_tuesday_is_within_business_hours() -> None:
    result = after_hours(ny(2026, 11, 24, 10, 0), BUSINESS, "business")
    assert not result.after_hours
    assert result.reason == (
        "10:00 Tue 2026-11-24 America/New_York is within business hours (mon-fri 08:00-18:00)"
        " on calendar business"
    )


def test_opening_instant_is_within_hours_and_the_minute_before_is_not() -> None:
    assert flag(ny(2026, 11, 24, 7, 59, 59))
    assert not flag(ny(2026, 11, 24, 8, 0))
    assert not flag(ny(2026, 11, 24, 17, 59, 59))


def test_any_timezone_is_read_as_the_new_york_wall_clock() -> None:
    # 23:30 UTC on Tuesday 2026-11-24 is 18:30 EST: after hours, reported in New York time.
    result = after_hours(dt.datetime(2026, 11, 24, 23, 30, tzinfo=UTC), BUSINESS, "business")
    assert result.after_hours
    assert result.reason.startswith("18:30 Tue 2026-11-24 America/New_York")
    # 14:00 UTC the same day is 09:00 EST: open.
    assert not flag(dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("utc", "local", "closed"),
    [
        # Spring forward, Sunday 2026-03-08: closed all day (a Sunday), on both sides of 02:00.
        (dt.datetime(2026, 3, 8, 6, 59), "01:59 Sun 2026-03-08", True),
        (dt.datetime(2026, 3, 8, 7, 0), "03:00 Sun 2026-03-08", True),
        (dt.datetime(2026, 3, 8, 14, 0), "10:00 Sun 2026-03-08", True),
        # Monday after: opening is 08:00 EDT = 12:00 UTC (it was 13:00 UTC the week before).
        (dt.datetime(2026, 3, 9, 11, 59), "07:59 Mon 2026-03-09", True),
        (dt.datetime(2026, 3, 9, 12, 0), "08:00 Mon 2026-03-09", False),
        (dt.datetime(2026, 3, 9, 21, 59), "17:59 Mon 2026-03-09", False),
        (dt.datetime(2026, 3, 9, 22, 0), "18:00 Mon 2026-03-09", True),
        # Fall back, Sunday 2026-11-01: the repeated 01:00 hour, both times, and midday.
        (dt.datetime(2026, 11, 1, 5, 30), "01:30 Sun 2026-11-01", True),
        (dt.datetime(2026, 11, 1, 6, 30), "01:30 Sun 2026-11-01", True),
        (dt.datetime(2026, 11, 1, 16, 0), "11:00 Sun 2026-11-01", True),
        # Monday after: opening is 08:00 EST = 13:00 UTC (it was 12:00 UTC the week before).
        (dt.datetime(2026, 11, 2, 12, 59), "07:59 Mon 2026-11-02", True),
        (dt.datetime(2026, 11, 2, 13, 0), "08:00 Mon 2026-11-02", False),
        (dt.datetime(2026, 11, 2, 22, 59), "17:59 Mon 2026-11-02", False),
        (dt.datetime(2026, 11, 2, 23, 0), "18:00 Mon 2026-11-02", True),
    ],
)
def test_dst_change_days_follow_the_new_york_wall_clock(
    utc: dt.datetime, local: str, closed: bool
) -> None:
    result = after_hours(utc.replace(tzinfo=UTC), BUSINESS, "business")
    assert result.after_hours is closed
    assert result.reason.startswith(f"{local} America/New_York")


def test_the_same_wall_clock_across_a_dst_change_gets_the_same_answer() -> None:
    # Friday before and Monday after each change, written as New York wall-clock times.
    for before, after in (((2026, 3, 6), (2026, 3, 9)), ((2026, 10, 30), (2026, 11, 2))):
        for hour, minute, closed in ((7, 59, True), (8, 0, False), (17, 59, False), (18, 0, True)):
            assert flag(ny(*before, hour, minute)) is closed
            assert flag(ny(*after, hour, minute)) is closed


def test_a_24_7_calendar_is_never_after_hours() -> None:
    always = CALENDARS["always"]
    result = after_hours(ny(2026, 11, 26, 3, 0), always, "always")
    assert not result.after_hours
    assert "(open 24/7) on calendar always" in result.reason


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        after_hours(dt.datetime(2026, 11, 24, 19, 30), BUSINESS, "business")


def test_hours_are_described_as_calendars_toml_writes_them() -> None:
    assert describe_hours(BUSINESS) == "mon-fri 08:00-18:00"
    split = Calendar(
        "split",
        NY,
        weekly=(((480, 720), (780, 1080)),) * 5 + (((540, 720),), ()),
    )
    assert describe_hours(split) == "mon-fri 08:00-12:00, 13:00-18:00; sat 09:00-12:00"
    assert describe_hours(Calendar("shut", NY)) == "never open"


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=dt.datetime(2025, 1, 1),
        max_value=dt.datetime(2028, 12, 31),
        timezones=st.sampled_from([UTC, NY, ZoneInfo("Asia/Kolkata"), ZoneInfo("Pacific/Apia")]),
    )
)
def test_after_hours_is_exactly_the_calendar_being_closed(at: dt.datetime) -> None:
    for name, calendar in CALENDARS.items():
        assert after_hours(at, calendar, name).after_hours is (not is_open(calendar, at))
