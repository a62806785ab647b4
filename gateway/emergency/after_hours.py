"""Is an instant after hours? The flag an emergency charge carries ("Additional fees may apply to
after hours service"), with the reason in plain words for `gateway show` and the ledger.

Owns only the explanation: whether a calendar is open is `gateway.policy.calendars.is_open`'s
decision, never re-implemented here (one place for each rule of the business), so "after hours" is
exactly "the calendar is closed", DST change days and holidays included.

Must never: read a clock (the instant is the caller's), read files or touch the database, or
accept a naive datetime (ValueError, as `is_open` raises).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.policy.calendars import WEEKDAYS, Calendar, is_open


@dataclass(frozen=True)
class AfterHours:
    after_hours: bool
    # e.g. "19:30 Tue 2026-11-24 America/New_York is outside business hours (mon-fri
    # 08:00-18:00) on calendar business"
    reason: str


def after_hours(at: dt.datetime, calendar: Calendar, calendar_name: str) -> AfterHours:
    """Whether `at` (aware, any timezone) falls outside `calendar`'s open hours, and why."""
    open_now = is_open(calendar, at)  # raises ValueError for a naive datetime
    # Through UTC, as is_open does, so a wall time that does not exist reads as the real instant.
    local = at.astimezone(dt.UTC).astimezone(calendar.zone)
    when = f"{local:%H:%M %a %Y-%m-%d} {calendar.zone.key}"
    hours = describe_hours(calendar)
    if open_now:
        return AfterHours(
            False, f"{when} is within business hours ({hours}) on calendar {calendar_name}"
        )
    if local.date() in calendar.holidays:
        return AfterHours(
            True, f"{local:%Y-%m-%d} is a holiday on calendar {calendar_name} ({when})"
        )
    return AfterHours(
        True, f"{when} is outside business hours ({hours}) on calendar {calendar_name}"
    )


def describe_hours(calendar: Calendar) -> str:
    """The weekly hours in the words of calendars.toml: "mon-fri 08:00-18:00; sat 09:00-12:00"."""
    if calendar.always:
        return "open 24/7"
    groups: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []  # first day, last day, hours
    for day, intervals in enumerate(calendar.weekly):
        if groups and groups[-1][1] == day - 1 and groups[-1][2] == intervals:
            groups[-1] = (groups[-1][0], day, intervals)
        else:
            groups.append((day, day, intervals))
    parts = []
    for first, last, intervals in groups:
        if not intervals:
            continue
        days = WEEKDAYS[first] if first == last else f"{WEEKDAYS[first]}-{WEEKDAYS[last]}"
        parts.append(f"{days} " + ", ".join(f"{_hhmm(s)}-{_hhmm(e)}" for s, e in intervals))
    return "; ".join(parts) or "never open"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# A fixed reference week (Monday 2026-01-05 to Monday 2026-01-12 UTC, padded a day each side for
# time zones): never the clock, so check-config gives the same answer at any hour.
_REFERENCE_START = dt.datetime(2026, 1, 4, tzinfo=dt.UTC)
_REFERENCE_STEPS = 9 * 24 * 4  # every 15 minutes


def first_uncovered_instant(
    response: Calendar, after_hours_calendar: Calendar
) -> dt.datetime | None:
    """An instant of the reference week that is after hours (`after_hours_calendar` closed) while
    `response` is closed too, or None when `response` is open whenever it is after hours.

    Checks the weekly hours (a 24/7 response calendar always passes); holidays are dates, not
    weekly hours, and are not sampled.
    """
    if response.always:
        return None
    for step in range(_REFERENCE_STEPS):
        at = _REFERENCE_START + dt.timedelta(minutes=15 * step)
        if not is_open(after_hours_calendar, at) and not is_open(response, at):
            return at
    return None
