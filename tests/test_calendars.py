"""Specification of business-hours calendars (gateway/policy/calendars.py).

Every instant is written out (a frozen clock: nothing here reads `now()`). Local times are New
York wall-clock times unless a name says UTC. The sample policy: Customer Service is open 8:00
AM to 6:00 PM Eastern, Monday through Friday, closed on the listed US holidays.
"""

from __future__ import annotations

import datetime as dt
import sys
import tomllib
import types
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.errors import ConfigError, ConfigProblem
from gateway.config.schema import CalendarDef, CalendarsFile
from gateway.config.validate import build
from gateway.policy.calendars import (
    Calendar,
    CalendarClosedError,
    add_business_minutes,
    add_business_minutes_with_pauses,
    build_calendar,
    build_calendars,
    business_minutes_between,
    check_calendars,
    is_open,
    next_opening,
)

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.UTC
NY = ZoneInfo("America/New_York")
US_HOLIDAYS = (
    dt.date(2026, 1, 1),
    dt.date(2026, 5, 25),
    dt.date(2026, 7, 3),
    dt.date(2026, 9, 7),
    dt.date(2026, 11, 26),
    dt.date(2026, 12, 25),
    dt.date(2027, 1, 1),
    dt.date(2027, 5, 31),
    dt.date(2027, 7, 5),
    dt.date(2027, 9, 6),
    dt.date(2027, 11, 25),
    dt.date(2027, 12, 24),
    dt.date(2027, 12, 31),
)

BUSINESS = build_calendar(
    "business",
    CalendarDef(
        timezone="America/New_York", hours={"mon-fri": ("08:00-18:00",)}, holidays=US_HOLIDAYS
    ),
)
ALWAYS = build_calendar("always", CalendarDef(timezone="UTC", always=True))
# Open 08:00-18:00 every day, so both DST Sundays (2026-03-08, 2026-11-01) are working days.
SEVEN_DAYS = build_calendar(
    "seven_days", CalendarDef(timezone="America/New_York", hours={"mon-sun": ("08:00-18:00",)})
)
# Open all day every day on the New York wall clock, but *not* `always`: the midnight seam and
# the DST hours themselves are open time.
NY_ALL_DAY = build_calendar(
    "ny_all_day", CalendarDef(timezone="America/New_York", hours={"mon-sun": ("00:00-24:00",)})
)
# Intervals inside the hours DST skips (02:00-03:00 on 2026-03-08) and repeats (01:00-02:00 on
# 2026-11-01).
NY_NIGHT = build_calendar(
    "ny_night", CalendarDef(timezone="America/New_York", hours={"sun": ("01:00-03:00",)})
)
# A lunch break, a short Saturday, and a zone whose DST shift is 30 minutes at 02:00 local.
LORD_HOWE = build_calendar(
    "lord_howe",
    CalendarDef(
        timezone="Australia/Lord_Howe",
        hours={
            "mon-fri": ("08:00-12:00", "13:00-17:30"),
            "sat": ("01:00-03:00",),
            "sun": ("00:30-02:45",),
        },
    ),
)


def ny(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=NY)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# ---- first-response and resolution due times on the business calendar ----------------------


@pytest.mark.parametrize(
    ("start", "minutes", "due"),
    [
        # Tuesday mid-morning.
        (ny(2026, 4, 14, 10, 30), 60, ny(2026, 4, 14, 11, 30)),
        (ny(2026, 4, 14, 10, 30), 1440, ny(2026, 4, 16, 14, 30)),  # 7.5 + 10 + 6.5 hours
        (ny(2026, 4, 14, 10, 30), 2880, ny(2026, 4, 21, 8, 30)),  # ... weekend skipped
        # One minute before closing: one minute today, the rest tomorrow.
        (ny(2026, 4, 14, 17, 59), 60, ny(2026, 4, 15, 8, 59)),
        (ny(2026, 4, 14, 17, 59), 1440, ny(2026, 4, 17, 11, 59)),
        (ny(2026, 4, 14, 17, 59), 2880, ny(2026, 4, 21, 15, 59)),
        # Exactly at closing: 18:00 is closed, the clock starts at 08:00 tomorrow.
        (ny(2026, 4, 14, 18, 0), 60, ny(2026, 4, 15, 9, 0)),
        (ny(2026, 4, 14, 18, 0), 1440, ny(2026, 4, 17, 12, 0)),
        (ny(2026, 4, 14, 18, 0), 2880, ny(2026, 4, 21, 16, 0)),
        # Friday evening: the clock starts Monday 08:00.
        (ny(2026, 4, 17, 19, 0), 60, ny(2026, 4, 20, 9, 0)),
        (ny(2026, 4, 17, 19, 0), 1440, ny(2026, 4, 22, 12, 0)),
        (ny(2026, 4, 17, 19, 0), 2880, ny(2026, 4, 24, 16, 0)),
        # The night before Thanksgiving (Thu 2026-11-26): Friday 08:00 is the next opening.
        (ny(2026, 11, 25, 20, 0), 60, ny(2026, 11, 27, 9, 0)),
        (ny(2026, 11, 25, 20, 0), 1440, ny(2026, 12, 1, 12, 0)),
        # New Year's Eve 2026 (Thu): Friday 2027-01-01 is a holiday, then the weekend.
        (ny(2026, 12, 31, 19, 0), 60, ny(2027, 1, 4, 9, 0)),
    ],
)
def test_business_due_time_for_first_response_and_resolution_targets(
    start: dt.datetime, minutes: int, due: dt.datetime
) -> None:
    assert add_business_minutes(BUSINESS, start, minutes) == due
    assert business_minutes_between(BUSINESS, start, due) == minutes


def test_due_time_may_land_exactly_on_closing_instant_not_next_morning() -> None:
    assert add_business_minutes(BUSINESS, ny(2026, 4, 14, 17, 0), 60) == ny(2026, 4, 14, 18, 0)


def test_zero_minutes_inside_hours_is_the_start_itself() -> None:
    assert add_business_minutes(BUSINESS, ny(2026, 4, 14, 10, 30), 0) == ny(2026, 4, 14, 10, 30)


def test_zero_minutes_outside_hours_is_the_next_opening() -> None:
    assert add_business_minutes(BUSINESS, ny(2026, 4, 17, 18, 0), 0) == ny(2026, 4, 20, 8, 0)
    assert add_business_minutes(BUSINESS, ny(2026, 11, 25, 18, 0), 0) == ny(2026, 11, 27, 8, 0)


def test_due_times_are_aware_utc_whatever_zone_the_start_is_in() -> None:
    due = add_business_minutes(BUSINESS, ny(2026, 4, 14, 10, 30), 60)
    assert due.tzinfo is UTC
    assert due == utc(2026, 4, 14, 15, 30)
    berlin = dt.datetime(2026, 4, 14, 16, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert add_business_minutes(BUSINESS, berlin, 60) == due


def test_fractional_minutes_are_exact_to_the_microsecond() -> None:
    due = add_business_minutes(BUSINESS, ny(2026, 4, 14, 17, 59, 30), 1.5)
    assert due == ny(2026, 4, 15, 8, 1)


def test_240_business_hours_span_weeks_and_holidays() -> None:
    # 24 working days of 10 hours from Monday 2026-11-16 08:00, Thanksgiving skipped.
    start = ny(2026, 11, 16, 8, 0)
    due = add_business_minutes(BUSINESS, start, 240 * 60)
    assert due == ny(2026, 12, 18, 18, 0)
    assert business_minutes_between(BUSINESS, start, due) == 240 * 60


def test_targets_longer_than_the_closed_search_limit_still_work() -> None:
    # 1300 working days is about five years: the 3-year bound is on *closed* time only.
    start = ny(2026, 1, 5, 8, 0)
    due = add_business_minutes(BUSINESS, start, 1300 * 600)
    assert business_minutes_between(BUSINESS, start, due) == 1300 * 600
    assert is_open(BUSINESS, due - dt.timedelta(microseconds=1))


# ---- is_open and next_opening -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (ny(2026, 4, 14, 7, 59, 59), False),
        (ny(2026, 4, 14, 8, 0), True),
        (ny(2026, 4, 14, 17, 59, 59), True),
        (ny(2026, 4, 14, 18, 0), False),
        (ny(2026, 4, 18, 12, 0), False),  # Saturday
        (ny(2026, 11, 26, 12, 0), False),  # Thanksgiving
        (utc(2026, 4, 14, 12, 0), True),  # 08:00 EDT
        (utc(2026, 1, 13, 12, 30), False),  # 07:30 EST
    ],
)
def test_is_open_reads_the_local_wall_clock(instant: dt.datetime, expected: bool) -> None:
    assert is_open(BUSINESS, instant) is expected


def test_next_opening_is_the_instant_itself_when_open() -> None:
    assert next_opening(BUSINESS, ny(2026, 4, 14, 9, 15)) == ny(2026, 4, 14, 9, 15)


def test_next_opening_after_friday_close_is_monday_morning() -> None:
    assert next_opening(BUSINESS, ny(2026, 4, 17, 18, 0)) == ny(2026, 4, 20, 8, 0)


def test_next_opening_skips_a_holiday_and_the_weekend_after_it() -> None:
    assert next_opening(BUSINESS, ny(2026, 12, 24, 18, 0)) == ny(2026, 12, 28, 8, 0)


# ---- DST change days (America/New_York: 2026-03-08 spring forward, 2026-11-01 fall back) -----


def test_business_clock_over_the_spring_forward_weekend_counts_wall_clock_hours() -> None:
    # Friday 17:00 EST + 60: 60 minutes to close, due 18:00 EST; + 120: Monday 09:00 *EDT*.
    assert add_business_minutes(BUSINESS, ny(2026, 3, 6, 17, 0), 60) == utc(2026, 3, 6, 23, 0)
    assert add_business_minutes(BUSINESS, ny(2026, 3, 6, 17, 0), 120) == utc(2026, 3, 9, 13, 0)


def test_business_clock_over_the_fall_back_weekend_counts_wall_clock_hours() -> None:
    # Friday 17:00 EDT + 120: Monday 09:00 *EST*.
    assert add_business_minutes(BUSINESS, ny(2026, 10, 30, 17, 0), 120) == utc(2026, 11, 2, 14, 0)


@pytest.mark.parametrize("day", [dt.date(2026, 3, 8), dt.date(2026, 11, 1)])
def test_dst_change_day_is_open_08_to_18_on_the_local_wall_clock(day: dt.date) -> None:
    opening = ny(day.year, day.month, day.day, 8, 0)
    closing = ny(day.year, day.month, day.day, 18, 0)
    assert business_minutes_between(SEVEN_DAYS, opening - dt.timedelta(hours=3), closing) == 600
    assert next_opening(SEVEN_DAYS, ny(day.year, day.month, day.day, 1, 0)) == opening
    assert add_business_minutes(SEVEN_DAYS, opening, 600) == closing
    assert add_business_minutes(
        SEVEN_DAYS, opening - dt.timedelta(hours=7), 60
    ) == opening + dt.timedelta(hours=1)


def test_spring_forward_sunday_opens_at_08_edt() -> None:
    # Saturday 17:30 EST + 60: 30 minutes Saturday, 30 minutes from Sunday 08:00 EDT (12:00 UTC).
    assert add_business_minutes(SEVEN_DAYS, ny(2026, 3, 7, 17, 30), 60) == utc(2026, 3, 8, 12, 30)


def test_fall_back_sunday_opens_at_08_est() -> None:
    assert add_business_minutes(SEVEN_DAYS, ny(2026, 10, 31, 17, 30), 60) == utc(
        2026, 11, 1, 13, 30
    )


def test_all_day_calendar_has_23_hours_on_spring_forward_and_25_on_fall_back() -> None:
    assert business_minutes_between(NY_ALL_DAY, ny(2026, 3, 8), ny(2026, 3, 9)) == 23 * 60
    assert business_minutes_between(NY_ALL_DAY, ny(2026, 11, 1), ny(2026, 11, 2)) == 25 * 60


def test_hours_skipped_by_spring_forward_are_never_open() -> None:
    # "01:00-03:00" on 2026-03-08: 01:00-02:00 EST happens, 02:00-03:00 never does.
    day_start, next_day = ny(2026, 3, 8), ny(2026, 3, 9)
    assert business_minutes_between(NY_NIGHT, day_start, next_day) == 60
    assert is_open(NY_NIGHT, utc(2026, 3, 8, 6, 59, 59))  # 01:59:59 EST
    assert not is_open(NY_NIGHT, utc(2026, 3, 8, 7, 0))  # 03:00 EDT
    assert add_business_minutes(NY_NIGHT, ny(2026, 3, 8, 1, 30), 30) == utc(2026, 3, 8, 7, 0)
    assert add_business_minutes(NY_NIGHT, ny(2026, 3, 8, 1, 30), 31) == ny(2026, 3, 15, 1, 1)


def test_hours_repeated_by_fall_back_are_open_both_times() -> None:
    # "01:00-03:00" on 2026-11-01: 01:00-02:00 EDT, again 01:00-02:00 EST, then 02:00-03:00 EST.
    assert business_minutes_between(NY_NIGHT, ny(2026, 11, 1), ny(2026, 11, 2)) == 180
    assert is_open(NY_NIGHT, utc(2026, 11, 1, 5, 30))  # 01:30 EDT
    assert is_open(NY_NIGHT, utc(2026, 11, 1, 6, 30))  # 01:30 EST
    assert add_business_minutes(NY_NIGHT, utc(2026, 11, 1, 5, 0), 180) == utc(2026, 11, 1, 8, 0)


def test_lord_howe_half_hour_dst_shift_is_counted_on_the_wall_clock() -> None:
    # Sunday 2026-10-04 02:00 local (+10:30) becomes 02:30 (+11): "00:30-02:45" is 1h45 long.
    zone = LORD_HOWE.zone
    sunday = dt.datetime(2026, 10, 4, tzinfo=zone)
    assert business_minutes_between(LORD_HOWE, sunday, sunday + dt.timedelta(days=1)) == 105
    # Sunday 2026-04-05 02:00 local (+11) becomes 01:30 (+10:30): 00:30-02:45 is 2h45 long.
    sunday = dt.datetime(2026, 4, 5, tzinfo=zone)
    assert business_minutes_between(LORD_HOWE, sunday, sunday + dt.timedelta(days=1)) == 165


# ---- 24/7 (Zammad #3180: a 24/7 calendar closed for a minute at midnight) --------------------


@pytest.mark.parametrize(
    "instant",
    [utc(2026, 1, 1), utc(2026, 12, 31, 23, 59, 30), utc(2026, 3, 8, 7, 0), ny(2026, 11, 1, 1, 30)],
)
def test_always_calendar_is_open_at_midnight_and_every_other_instant(instant: dt.datetime) -> None:
    assert is_open(ALWAYS, instant)
    assert next_opening(ALWAYS, instant) == instant.astimezone(UTC)


def test_always_calendar_due_time_at_midnight_exactly() -> None:
    assert add_business_minutes(ALWAYS, utc(2026, 1, 1), 60) == utc(2026, 1, 1, 1, 0)
    assert add_business_minutes(ALWAYS, utc(2026, 1, 1), 1440) == utc(2026, 1, 2)
    assert add_business_minutes(ALWAYS, utc(2026, 1, 1), 0) == utc(2026, 1, 1)


def test_always_calendar_due_time_across_midnight_from_23_59_30() -> None:
    assert add_business_minutes(ALWAYS, utc(2026, 12, 31, 23, 59, 30), 1) == utc(
        2027, 1, 1, 0, 0, 30
    )
    assert (
        business_minutes_between(ALWAYS, utc(2026, 12, 31, 23, 59, 30), utc(2027, 1, 1, 0, 0, 30))
        == 1
    )


def test_always_calendar_counts_elapsed_time_on_dst_days() -> None:
    # 01:30 EST + 60 minutes on spring-forward day is 03:30 EDT: one real hour.
    assert add_business_minutes(ALWAYS, ny(2026, 3, 8, 1, 30), 60) == ny(2026, 3, 8, 3, 30)


def test_all_day_calendar_has_no_gap_at_local_midnight() -> None:
    assert is_open(NY_ALL_DAY, ny(2026, 1, 1))
    assert is_open(NY_ALL_DAY, ny(2025, 12, 31, 23, 59, 30))
    assert add_business_minutes(NY_ALL_DAY, ny(2025, 12, 31, 23, 59, 30), 1) == ny(
        2026, 1, 1, 0, 0, 30
    )
    assert (
        business_minutes_between(NY_ALL_DAY, ny(2025, 12, 31, 23, 0), ny(2026, 1, 1, 1, 0)) == 120
    )


# ---- pauses (waiting on the customer stops the clock) ----------------------------------------


def test_pause_inside_hours_pushes_the_due_time_back() -> None:
    start = ny(2026, 4, 14, 10, 0)
    pauses = [(ny(2026, 4, 14, 10, 15), ny(2026, 4, 14, 10, 45))]
    assert add_business_minutes_with_pauses(BUSINESS, start, 60, pauses) == ny(2026, 4, 14, 11, 30)


def test_pause_outside_hours_changes_nothing() -> None:
    start = ny(2026, 4, 14, 17, 30)
    pauses = [(ny(2026, 4, 14, 19, 0), ny(2026, 4, 15, 7, 0))]
    assert add_business_minutes_with_pauses(BUSINESS, start, 60, pauses) == ny(2026, 4, 15, 8, 30)


def test_pause_covering_the_start_starts_the_clock_when_it_ends() -> None:
    pauses = [(ny(2026, 4, 14, 9, 0), ny(2026, 4, 14, 10, 30))]
    start = ny(2026, 4, 14, 10, 0)
    assert add_business_minutes_with_pauses(BUSINESS, start, 60, pauses) == ny(2026, 4, 14, 11, 30)
    assert add_business_minutes_with_pauses(BUSINESS, start, 0, pauses) == ny(2026, 4, 14, 10, 30)


def test_overlapping_unordered_pauses_count_once() -> None:
    start = ny(2026, 4, 14, 10, 0)
    pauses = [
        (ny(2026, 4, 14, 10, 30), ny(2026, 4, 14, 11, 0)),
        (ny(2026, 4, 14, 10, 15), ny(2026, 4, 14, 10, 45)),
        (ny(2026, 4, 14, 10, 15), ny(2026, 4, 14, 10, 15)),  # empty: ignored
    ]
    assert add_business_minutes_with_pauses(BUSINESS, start, 60, pauses) == ny(2026, 4, 14, 11, 45)
    assert business_minutes_between(BUSINESS, start, ny(2026, 4, 14, 11, 45), pauses) == 60


def test_pause_spanning_days_stops_the_clock_until_it_ends() -> None:
    start = ny(2026, 4, 14, 17, 0)
    pauses = [(ny(2026, 4, 14, 17, 30), ny(2026, 4, 16, 12, 0))]
    assert add_business_minutes_with_pauses(BUSINESS, start, 60, pauses) == ny(2026, 4, 16, 12, 30)


def test_pause_ending_before_it_begins_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"pauses\[0\] ends before it begins"):
        add_business_minutes_with_pauses(
            BUSINESS, ny(2026, 4, 14, 10), 60, [(ny(2026, 4, 14, 11), ny(2026, 4, 14, 10))]
        )


# ---- misuse is loud ---------------------------------------------------------------------------


def test_naive_datetimes_are_rejected() -> None:
    naive = dt.datetime(2026, 4, 14, 10, 0)
    with pytest.raises(ValueError, match="aware"):
        is_open(BUSINESS, naive)
    with pytest.raises(ValueError, match="aware"):
        add_business_minutes(BUSINESS, naive, 60)
    with pytest.raises(ValueError, match="aware"):
        business_minutes_between(BUSINESS, ny(2026, 4, 14), naive)


@pytest.mark.parametrize("minutes", [-1, float("nan"), float("inf")])
def test_negative_or_non_finite_minutes_are_rejected(minutes: float) -> None:
    with pytest.raises(ValueError, match="minutes"):
        add_business_minutes(BUSINESS, ny(2026, 4, 14, 10), minutes)


def test_minutes_between_requires_a_before_b() -> None:
    with pytest.raises(ValueError, match="a must not be after b"):
        business_minutes_between(BUSINESS, ny(2026, 4, 15), ny(2026, 4, 14))


def test_calendar_with_no_open_hours_raises_a_clear_error_instead_of_searching_forever() -> None:
    never = Calendar("never", NY)
    with pytest.raises(CalendarClosedError, match="'never' has no open hours in the 3 years"):
        add_business_minutes(never, ny(2026, 4, 14), 60)
    with pytest.raises(CalendarClosedError):
        next_opening(never, ny(2026, 4, 14))
    assert business_minutes_between(never, ny(2026, 1, 1), ny(2036, 1, 1)) == 0


# ---- properties over many instants and targets (2025-2028, 0-20,000 minutes) -------------------

CALENDARS = [BUSINESS, SEVEN_DAYS, NY_ALL_DAY, NY_NIGHT, LORD_HOWE, ALWAYS]
ZONES = [UTC, NY, LORD_HOWE.zone, dt.timezone(dt.timedelta(hours=5, minutes=45))]
# New York and Lord Howe DST change days: uniform sampling over four years rarely lands on them.
DST_DAYS = [
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2027, 3, 14, 7),
    utc(2027, 11, 7, 6),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15, 30),
]
instants = st.one_of(
    st.datetimes(
        min_value=dt.datetime(2025, 1, 1),
        max_value=dt.datetime(2028, 12, 31),
        timezones=st.sampled_from(ZONES),
    ),
    st.builds(
        lambda change, seconds, zone: (change + dt.timedelta(seconds=seconds)).astimezone(zone),
        st.sampled_from(DST_DAYS),
        st.integers(min_value=-36 * 3600, max_value=36 * 3600),
        st.sampled_from(ZONES),
    ),
)
targets = st.integers(min_value=0, max_value=20_000)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ONE_US = dt.timedelta(microseconds=1)


@PROPERTY
@given(cal=st.sampled_from(CALENDARS), start=instants, minutes=targets)
def test_due_time_is_never_inside_closed_hours_and_counts_exactly_the_target(
    cal: Calendar, start: dt.datetime, minutes: int
) -> None:
    # Compare in UTC: PEP 495 makes a repeated or skipped local time unequal to any other zone's.
    start = start.astimezone(UTC)
    due = add_business_minutes(cal, start, minutes)
    assert due.tzinfo is UTC
    assert due >= start
    if minutes > 0:
        assert is_open(cal, due - ONE_US)  # the instant just before a due time is open
    else:
        assert is_open(cal, due)
        assert due == next_opening(cal, start)
    assert abs(business_minutes_between(cal, start, due) - minutes) < 1e-6
    if cal.always:
        assert due == start + dt.timedelta(minutes=minutes)


@PROPERTY
@given(cal=st.sampled_from(CALENDARS), start=instants, first=targets, second=targets.filter(bool))
def test_adding_in_two_steps_equals_adding_at_once(
    cal: Calendar, start: dt.datetime, first: int, second: int
) -> None:
    halfway = add_business_minutes(cal, start, first)
    assert add_business_minutes(cal, halfway, second) == add_business_minutes(
        cal, start, first + second
    )


@PROPERTY
@given(cal=st.sampled_from(CALENDARS), instant=instants)
def test_is_open_agrees_with_the_open_time_counted(cal: Calendar, instant: dt.datetime) -> None:
    assert is_open(cal, instant) is is_open(cal, instant.astimezone(UTC))
    instant = instant.astimezone(UTC)  # arithmetic in UTC: same-zone + is wall-clock and drops fold
    counted = business_minutes_between(cal, instant, instant + ONE_US)
    assert (counted > 0) is is_open(cal, instant)
    opening = next_opening(cal, instant)
    assert is_open(cal, opening)
    assert business_minutes_between(cal, instant, opening) == 0


@PROPERTY
@given(
    cal=st.sampled_from(CALENDARS),
    start=instants,
    minutes=targets,
    pauses=st.lists(
        st.tuples(instants, st.integers(min_value=0, max_value=7 * 24 * 60)), max_size=4
    ),
)
def test_paused_time_never_counts(
    cal: Calendar, start: dt.datetime, minutes: int, pauses: list[tuple[dt.datetime, int]]
) -> None:
    windows = [
        (begin, begin.astimezone(UTC) + dt.timedelta(minutes=length)) for begin, length in pauses
    ]
    due = add_business_minutes_with_pauses(cal, start, minutes, windows)
    assert due >= add_business_minutes(cal, start, minutes)
    assert abs(business_minutes_between(cal, start, due, windows) - minutes) < 1e-6
    if minutes > 0:
        just_before = due - ONE_US
        assert is_open(cal, just_before)
        assert not any(begin <= just_before < end for begin, end in windows)


# ---- calendars.toml ---------------------------------------------------------------------------


def load_calendars(tmp_path: Path, text: str) -> tuple[CalendarsFile | None, list[ConfigProblem]]:
    """What the loader does with calendars.toml: the schema's checks, then check_calendars."""
    path = tmp_path / "calendars.toml"
    path.write_text(text, encoding="utf-8")
    with path.open("rb") as fh:
        table = tomllib.load(fh)
    calendars, problems = build(CalendarsFile, table, path)
    if calendars is not None:
        problems = problems + check_calendars(calendars, path)
    return calendars, problems


def only_problem(problems: list[ConfigProblem]) -> ConfigProblem:
    assert len(problems) == 1, [str(p) for p in problems]
    assert problems[0].file == "calendars.toml"
    return problems[0]


def test_shipped_sample_is_valid_and_matches_the_customer_service_hours() -> None:
    path = ROOT / "config" / "calendars.toml"
    with path.open("rb") as fh:
        calendars, problems = build(CalendarsFile, tomllib.load(fh), path)
    assert calendars is not None
    assert problems + check_calendars(calendars, path) == []
    built = build_calendars(calendars)
    business, always = built["business"], built["always"]
    assert str(business.zone) == "America/New_York"
    assert business.weekly == (((480, 1080),),) * 5 + ((), ())
    assert dt.date(2026, 11, 26) in business.holidays
    assert always.always
    assert str(always.zone) == "UTC"


def test_bad_timezone_names_the_key_and_suggests_the_right_name(tmp_path: Path) -> None:
    _, problems = load_calendars(
        tmp_path,
        '[calendar.business]\ntimezone = "America/New_Yrok"\n'
        '[calendar.business.hours]\nmon = ["08:00-18:00"]\n',
    )
    problem = only_problem(problems)
    assert problem.key == "calendar.business.timezone"
    assert problem.line == 2
    assert "'America/New_Yrok' is not an IANA timezone name" in problem.message
    assert "did you mean 'America/New_York'?" in problem.message


@pytest.mark.parametrize(
    "bad", ["8:00-25:00", "08:00", "08:60-09:00", "24:30-24:40", "eight to six"]
)
def test_bad_hours_string_names_the_key_with_its_index(tmp_path: Path, bad: str) -> None:
    _, problems = load_calendars(
        tmp_path,
        f'[calendar.business]\ntimezone = "UTC"\n\n'
        f'[calendar.business.hours]\nmon = ["07:00-07:30", "{bad}"]\n',
    )
    problem = only_problem(problems)
    assert problem.key == "calendar.business.hours.mon[1]"
    assert problem.line == 5
    assert f'calendar.business.hours.mon[1]: "{bad}" is not HH:MM-HH:MM' in str(problem)


def test_interval_that_crosses_midnight_is_rejected(tmp_path: Path) -> None:
    _, problems = load_calendars(tmp_path, '[calendar.night.hours]\nmon-fri = ["22:00-06:00"]\n')
    problem = only_problem(problems)
    assert problem.key == "calendar.night.hours.mon-fri[0]"
    assert "cannot cross midnight" in problem.message


def test_end_of_day_written_as_23_59_is_rejected_for_24_00(tmp_path: Path) -> None:
    _, problems = load_calendars(tmp_path, '[calendar.late.hours]\nmon = ["08:00-23:59"]\n')
    assert "write 24:00" in only_problem(problems).message


def test_unknown_weekday_key_is_rejected(tmp_path: Path) -> None:
    _, problems = load_calendars(
        tmp_path, '[calendar.business.hours]\nmonday = ["08:00-18:00"]\ntue = ["08:00-18:00"]\n'
    )
    problem = only_problem(problems)
    assert problem.key == "calendar.business.hours.monday"
    assert problem.line == 2
    assert "unknown weekday 'monday'" in problem.message


def test_backwards_weekday_range_is_rejected(tmp_path: Path) -> None:
    _, problems = load_calendars(tmp_path, '[calendar.b.hours]\nfri-mon = ["08:00-18:00"]\n')
    assert only_problem(problems).key == "calendar.b.hours.fri-mon"


def test_weekday_given_twice_is_rejected(tmp_path: Path) -> None:
    _, problems = load_calendars(
        tmp_path, '[calendar.b.hours]\nmon-fri = ["08:00-18:00"]\nfri = ["08:00-12:00"]\n'
    )
    problem = only_problem(problems)
    assert problem.key == "calendar.b.hours.fri"
    assert "fri is already given by hours.mon-fri" in problem.message


def test_overlapping_intervals_are_rejected(tmp_path: Path) -> None:
    _, problems = load_calendars(
        tmp_path, '[calendar.b.hours]\nmon = ["13:00-18:00", "08:00-14:00"]\n'
    )
    problem = only_problem(problems)
    assert problem.key == "calendar.b.hours.mon[0]"
    assert "overlaps" in problem.message


def test_several_intervals_a_day_and_touching_intervals_merge(tmp_path: Path) -> None:
    calendars, problems = load_calendars(
        tmp_path, '[calendar.b.hours]\nmon = ["13:00-18:00", "08:00-12:00", "18:00-19:00"]\n'
    )
    assert problems == [] and calendars is not None
    assert build_calendars(calendars)["b"].weekly[0] == ((480, 720), (780, 1140))


def test_calendar_with_no_open_hours_is_rejected(tmp_path: Path) -> None:
    _, problems = load_calendars(
        tmp_path, '[calendar.closed]\ntimezone = "UTC"\n[calendar.closed.hours]\nsat = []\n'
    )
    problem = only_problem(problems)
    assert problem.key == "calendar.closed.hours"
    assert "no open hours" in problem.message


def test_unknown_key_in_a_calendar_is_rejected_by_the_schema(tmp_path: Path) -> None:
    _, problems = load_calendars(tmp_path, '[calendar.b]\nhour = {mon = ["08:00-18:00"]}\n')
    assert any(p.key == "calendar.b.hour" and "unknown key" in p.message for p in problems)


def test_always_calendar_rejects_hours_and_holidays(tmp_path: Path) -> None:
    _, problems = load_calendars(
        tmp_path,
        "[calendar.x]\nalways = true\nholidays = [2026-12-25]\n"
        '[calendar.x.hours]\nmon = ["08:00-18:00"]\n',
    )
    assert sorted(p.key or "" for p in problems) == ["calendar.x.holidays", "calendar.x.hours"]


def test_holidays_accept_toml_dates_and_iso_strings_only(tmp_path: Path) -> None:
    _, problems = load_calendars(
        tmp_path,
        '[calendar.b]\nholidays = [2026-12-25, "2026-12-24", "2026-02-30",\n'
        "2026-12-31T09:00:00, 7]\n"
        '[calendar.b.hours]\nmon-fri = ["08:00-18:00"]\n',
    )
    assert [p.key for p in problems] == [
        "calendar.b.holidays[2]",
        "calendar.b.holidays[3]",
        "calendar.b.holidays[4]",
    ]


def test_holiday_country_without_the_holidays_package_says_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "holidays", None)  # import holidays -> ImportError
    _, problems = load_calendars(
        tmp_path,
        '[calendar.b]\nholiday_country = "US"\n[calendar.b.hours]\nmon-fri = ["08:00-18:00"]\n',
    )
    problem = only_problem(problems)
    assert problem.key == "calendar.b.holiday_country"
    assert problem.line == 2
    assert "pip install holidays" in problem.message


def test_holiday_country_uses_the_holidays_package_when_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[str, str | None]] = []

    def country_holidays(
        country: str, subdiv: str | None = None, years: object = None
    ) -> dict[dt.date, str]:
        if country != "US":
            raise NotImplementedError(f"Country {country} not available")
        asked.append((country, subdiv))
        return {dt.date(2026, 7, 3): "Independence Day (observed)"}

    fake = types.ModuleType("holidays")
    setattr(fake, "country_holidays", country_holidays)  # noqa: B010 (a module attribute)
    monkeypatch.setitem(sys.modules, "holidays", fake)
    hours: dict[str, tuple[str, ...]] = {"mon-fri": ("08:00-18:00",)}
    cal = build_calendar(
        "b", CalendarDef(hours=hours, holiday_country="US", holiday_subdivision="NY")
    )
    assert asked == [("US", "NY")]
    assert not is_open(cal, utc(2026, 7, 3, 12, 0))
    with pytest.raises(
        ConfigError, match=r"calendar.b.holiday_country: the holidays package does not know 'XX'"
    ):
        build_calendar("b", CalendarDef(hours=hours, holiday_country="XX"))


def test_build_calendar_raises_config_error_listing_every_problem() -> None:
    definition = CalendarDef(timezone="Mars/Olympus", hours={"mon": ("8-18",), "funday": ()})
    with pytest.raises(ConfigError) as caught:
        build_calendar("business", definition)
    assert {p.key for p in caught.value.problems} == {
        "calendar.business.timezone",
        "calendar.business.hours.mon[0]",
        "calendar.business.hours.funday",
    }
