"""Business-hours calendars: when an SLA clock runs, and when a due time falls.

Owns the `Calendar` value built from `calendars.toml` (`[calendar.<name>]`), the checks that make
a calendar definition valid (`check_calendars`, problems naming file, key and line), and the
arithmetic of open time: `is_open`, `next_opening`, `add_business_minutes`,
`add_business_minutes_with_pauses`, `business_minutes_between`.

Must never: read a clock (every function takes explicit instants; `now()` is the caller's), read
files or touch the database, return a naive datetime, count closed or paused time, or walk time
minute by minute (it steps over open intervals, one local day at a time, and gives up with
`CalendarClosedError` after 3 years without any open time).

Conventions (each one pinned by a test in tests/test_calendars.py):
- Hours are local wall-clock time in the calendar's IANA zone. An instant is open when its local
  date is not a holiday and its local time of day lies in [start, end) of one of that weekday's
  intervals; "24:00" ends the day. So 08:00-18:00 means 08:00-18:00 on the wall clock on both
  DST change days; a wall-clock time skipped by spring-forward is never open, and one repeated
  by fall-back is open both times it occurs.
- Intervals are half-open: 18:00 itself is closed for "08:00-18:00". Consecutive intervals
  ("... 24:00" then "00:00 ...") are one continuous open stretch: no gap at midnight.
- A due time is the earliest instant by which `minutes` of open time have elapsed since the
  clock started. It may land exactly on a closing instant (17:00 + 60 minutes is due 18:00 the
  same day, not 08:00 the next morning); the instant just before it is always open. With 0
  minutes the due time is when the clock starts: `start` if open, else the next opening.
- A 24/7 calendar (`always = true`) is open at every instant, midnight included (Zammad #3180:
  a 24/7 calendar closed for a minute at midnight): due == start + minutes, exactly.
- Inputs may be in any timezone but must be aware; results are aware datetimes in UTC, exact
  to the microsecond (a fractional minute is rounded to the nearest microsecond).
"""

from __future__ import annotations

import datetime as dt
import difflib
import importlib
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from gateway.config.errors import ConfigError, ConfigProblem, find_line
from gateway.config.schema import CalendarDef, CalendarsFile

UTC = dt.UTC
FILE = "calendars.toml"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 24 * 60
# Give up when a calendar has no open time at all for this long (a definition that is closed
# every day, or holidays covering everything): a clear error instead of an endless search.
CLOSED_SEARCH_LIMIT = dt.timedelta(days=3 * 366)
# Years for which the optional `holidays` package's country holidays are expanded into dates.
HOLIDAY_YEARS = range(2000, 2101)

Span = tuple[dt.datetime, dt.datetime]
Minutes = tuple[int, int]
# How the config parsers report: problem(key relative to `calendar.<name>`, message).
ProblemFn = Callable[[str, str], None]


class CalendarClosedError(Exception):
    """A calendar has no open time within `CLOSED_SEARCH_LIMIT` of the instant asked about."""


@dataclass(frozen=True)
class Calendar:
    """A validated calendar. Build it with `build_calendar`; the functions below read it."""

    name: str
    zone: ZoneInfo
    # Open intervals per weekday, Monday first: sorted, disjoint, non-adjacent (start, end)
    # minutes since local midnight, 0 <= start < end <= 1440.
    weekly: tuple[tuple[Minutes, ...], ...] = ((),) * 7
    # Local dates closed all day.
    holidays: frozenset[dt.date] = field(default=frozenset())
    # Open at every instant (24/7): weekly and holidays are ignored.
    always: bool = False

    def __post_init__(self) -> None:
        if len(self.weekly) != 7:
            raise ValueError(f"calendar {self.name!r}: weekly needs 7 days, Monday first")
        for day in self.weekly:
            previous_end = -1
            for start, end in day:
                if not previous_end < start < end <= DAY_MINUTES:
                    raise ValueError(
                        f"calendar {self.name!r}: intervals must be sorted, disjoint and "
                        f"within 0..{DAY_MINUTES} minutes, not {day}"
                    )
                previous_end = end


# ---- the arithmetic of open time ------------------------------------------------------------


def is_open(cal: Calendar, instant: dt.datetime) -> bool:
    """True when the calendar is open at `instant` (aware, any timezone)."""
    _require_aware(instant, "instant")
    if cal.always:
        return True
    # Through UTC: astimezone() to the zone an instant already carries is a no-op, which would
    # keep a wall time that does not exist (02:30 on a spring-forward day) instead of the real
    # instant it denotes (PEP 495).
    local = instant.astimezone(dt.UTC).astimezone(cal.zone)
    if local.date() in cal.holidays:
        return False
    # Microseconds since local midnight, compared with whole minutes: exact, no float.
    of_day = ((local.hour * 60 + local.minute) * 60 + local.second) * 1_000_000 + local.microsecond
    return any(
        start * 60_000_000 <= of_day < end * 60_000_000
        for start, end in cal.weekly[local.weekday()]
    )


def next_opening(cal: Calendar, instant: dt.datetime) -> dt.datetime:
    """The first open instant at or after `instant` (the instant itself when open), in UTC.

    Raises CalendarClosedError when nothing opens within 3 years."""
    start = _as_utc(instant, "instant")
    for lo, _hi in _open_spans(cal, start):
        return lo
    raise AssertionError("unreachable: _open_spans either yields or raises")  # pragma: no cover


def add_business_minutes(cal: Calendar, start: dt.datetime, minutes: float) -> dt.datetime:
    """When `minutes` of open time have elapsed since `start` (see the module's conventions).

    If `start` is closed the clock starts at the next opening. Returns an aware UTC datetime that
    is never inside closed hours; it may be a closing instant. Raises ValueError for a naive
    `start` or negative minutes, CalendarClosedError when nothing opens within 3 years."""
    return add_business_minutes_with_pauses(cal, start, minutes, ())


def add_business_minutes_with_pauses(
    cal: Calendar,
    start: dt.datetime,
    minutes: float,
    pauses: Sequence[tuple[dt.datetime, dt.datetime]],
) -> dt.datetime:
    """Like `add_business_minutes`, but time inside any pause [begin, end) does not count
    (a ticket waiting on the customer stops its resolution clock). Pauses may overlap, come in
    any order and reach outside open hours; an ongoing pause has no end yet, so the caller passes
    the instant it asks about as its end ("due if the customer answered now")."""
    begin = _as_utc(start, "start")
    if isinstance(minutes, bool) or not math.isfinite(minutes) or minutes < 0:
        raise ValueError(f"minutes must be a finite number >= 0, not {minutes!r}")
    remaining = dt.timedelta(minutes=minutes)
    for lo, hi in _without_pauses(_open_spans(cal, begin), _merge_pauses(pauses)):
        if remaining <= hi - lo:
            return lo + remaining
        remaining -= hi - lo
    raise AssertionError("unreachable: _open_spans either yields or raises")  # pragma: no cover


def business_minutes_between(
    cal: Calendar,
    a: dt.datetime,
    b: dt.datetime,
    pauses: Sequence[tuple[dt.datetime, dt.datetime]] = (),
) -> float:
    """Open minutes in [a, b), less any time inside `pauses`. Requires a <= b.

    Never raises CalendarClosedError: a calendar that never opens simply counts 0."""
    lo_bound, hi_bound = _as_utc(a, "a"), _as_utc(b, "b")
    if lo_bound > hi_bound:
        raise ValueError(f"a must not be after b ({a.isoformat()} > {b.isoformat()})")
    total = dt.timedelta(0)
    spans = _open_spans(cal, lo_bound, until=hi_bound)
    for lo, hi in _without_pauses(spans, _merge_pauses(pauses)):
        if lo >= hi_bound:
            break
        total += min(hi, hi_bound) - lo
    return total / dt.timedelta(minutes=1)


def _require_aware(instant: dt.datetime, what: str) -> None:
    if not isinstance(instant, dt.datetime):
        raise TypeError(f"{what} must be a datetime, not {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (with a timezone), not {instant!r}")


def _as_utc(instant: dt.datetime, what: str) -> dt.datetime:
    _require_aware(instant, what)
    return instant.astimezone(UTC)


def _merge_pauses(pauses: Sequence[tuple[dt.datetime, dt.datetime]]) -> list[Span]:
    spans: list[Span] = []
    for i, (begin, end) in enumerate(pauses):
        b, e = _as_utc(begin, f"pauses[{i}] begin"), _as_utc(end, f"pauses[{i}] end")
        if b > e:
            raise ValueError(f"pauses[{i}] ends before it begins ({begin} > {end})")
        if b < e:
            spans.append((b, e))
    spans.sort()
    merged: list[Span] = []
    for b, e in spans:
        if merged and b <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((b, e))
    return merged


def _without_pauses(spans: Iterable[Span], pauses: list[Span]) -> Iterator[Span]:
    """`spans` (increasing, disjoint) minus `pauses` (sorted, merged)."""
    i = 0
    for lo, hi in spans:
        while i < len(pauses) and pauses[i][1] <= lo:
            i += 1
        j = i
        while j < len(pauses) and pauses[j][0] < hi and lo < hi:
            p_begin, p_end = pauses[j]
            if p_begin > lo:
                yield lo, p_begin
            lo = max(lo, p_end)
            j += 1
        if lo < hi:
            yield lo, hi


def _open_spans(
    cal: Calendar, start: dt.datetime, until: dt.datetime | None = None
) -> Iterator[Span]:
    """Open time at or after `start` as increasing, disjoint UTC spans [lo, hi), the first one
    clipped to `start`. Stops after `until` when given; otherwise raises CalendarClosedError
    once CLOSED_SEARCH_LIMIT passes without any open time."""
    if cal.always:
        lo = start
        while until is None or lo < until:
            hi = lo + dt.timedelta(days=366)
            yield lo, hi
            lo = hi
        return
    day = start.astimezone(cal.zone).date()
    cursor = start
    last_open = start
    while True:
        day_start = dt.datetime.combine(day, dt.time(), tzinfo=UTC)
        # Every instant showing a wall-clock time of `day` lies within 24 h of its midnight
        # read as UTC (Python caps UTC offsets below 24 h).
        if until is not None and day_start - dt.timedelta(hours=24) >= until:
            return
        for lo, hi in _day_spans(cal, day):
            lo = max(lo, cursor)
            if lo < hi:
                yield lo, hi
                cursor = last_open = hi
        if until is None and day_start - dt.timedelta(hours=24) - last_open > CLOSED_SEARCH_LIMIT:
            raise CalendarClosedError(
                f"calendar {cal.name!r} has no open hours in the 3 years after "
                f"{last_open.isoformat()}: check its hours and holidays in {FILE}"
            )
        day += dt.timedelta(days=1)


@lru_cache(maxsize=16384)
def _day_spans(cal: Calendar, day: dt.date) -> tuple[Span, ...]:
    """The UTC spans during which the wall clock in cal.zone shows an open time of `day`.

    On each stretch of constant UTC offset, wall = utc + offset, so a wall-clock interval
    [s, e) maps to [s - offset, e - offset) clipped to the stretch; a DST day has two stretches,
    which is all it takes to get skipped and repeated wall-clock times right."""
    intervals = cal.weekly[day.weekday()]
    if day in cal.holidays or not intervals:
        return ()
    midnight = dt.datetime.combine(day, dt.time(), tzinfo=UTC)  # the wall clock's, read as UTC
    spans: list[Span] = []
    for seg_start, seg_end, offset in _offset_stretches(cal.zone, day):
        for start, end in intervals:
            lo = max(seg_start, midnight + dt.timedelta(minutes=start) - offset)
            hi = min(seg_end, midnight + dt.timedelta(minutes=end) - offset)
            if lo < hi:
                spans.append((lo, hi))
    spans.sort()
    merged: list[Span] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


@lru_cache(maxsize=16384)
def _offset_stretches(
    zone: ZoneInfo, day: dt.date
) -> tuple[tuple[dt.datetime, dt.datetime, dt.timedelta], ...]:
    """Split the UTC instants that may show a wall-clock time of `day` in `zone` (its midnight
    read as UTC, -24 h to +48 h) into stretches of constant UTC offset, each change located
    exactly (to the microsecond) by bisection. Sampling is hourly: no zone changes its offset
    twice within an hour."""
    midnight = dt.datetime.combine(day, dt.time(), tzinfo=UTC)
    t, end = midnight - dt.timedelta(hours=24), midnight + dt.timedelta(hours=48)
    stretch_start, offset = t, _offset(zone, t)
    stretches: list[tuple[dt.datetime, dt.datetime, dt.timedelta]] = []
    while t < end:
        probe = min(t + dt.timedelta(hours=1), end)
        if _offset(zone, probe) == offset:
            t = probe
            continue
        lo, hi = t, probe  # offset(lo) == offset != offset(hi)
        while hi - lo > dt.timedelta(microseconds=1):
            mid = lo + (hi - lo) // 2
            if _offset(zone, mid) == offset:
                lo = mid
            else:
                hi = mid
        stretches.append((stretch_start, hi, offset))
        stretch_start, offset, t = hi, _offset(zone, hi), hi
    stretches.append((stretch_start, end, offset))
    return tuple(stretches)


def _offset(zone: ZoneInfo, instant: dt.datetime) -> dt.timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset


# ---- from calendars.toml ----------------------------------------------------------------------

_INTERVAL = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def check_calendars(calendars: CalendarsFile, path: Path | None = None) -> list[ConfigProblem]:
    """Every problem with the calendars in `calendars.toml` (read from `path`, for line
    numbers), beyond what the schema's types catch. Empty means every calendar builds."""
    problems: list[ConfigProblem] = []
    for name, definition in calendars.calendar.items():
        problems.extend(check_calendar(name, definition, path))
    return problems


def check_calendar(
    name: str, definition: CalendarDef, path: Path | None = None
) -> list[ConfigProblem]:
    """Every problem with `[calendar.<name>]`, each naming calendars.toml and the exact key."""
    return _parse(name, definition, path)[1]


def build_calendar(name: str, definition: CalendarDef) -> Calendar:
    """The `Calendar` for `[calendar.<name>]`; raises ConfigError listing every problem."""
    calendar, problems = _parse(name, definition, None)
    if calendar is None:
        raise ConfigError(problems)
    return calendar


# The built-in calendar that is open at every instant; calendars.toml may define its own.
ROUND_THE_CLOCK = "24/7"


def build_calendars(calendars: CalendarsFile) -> Mapping[str, Calendar]:
    """Every calendar of `calendars.toml` by name; raises ConfigError listing every problem."""
    built: dict[str, Calendar] = {}
    problems: list[ConfigProblem] = []
    for name, definition in calendars.calendar.items():
        calendar, found = _parse(name, definition, None)
        problems.extend(found)
        if calendar is not None:
            built[name] = calendar
    if problems:
        raise ConfigError(problems)
    # emergency.toml's response_calendar defaults to this name (docs/emergency.md).
    built.setdefault(ROUND_THE_CLOCK, Calendar(ROUND_THE_CLOCK, ZoneInfo("UTC"), always=True))
    return built


def _parse(
    name: str, definition: CalendarDef, path: Path | None
) -> tuple[Calendar | None, list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    prefix = f"calendar.{name}"

    def problem(key: str, message: str) -> None:
        full = f"{prefix}.{key}"
        line = find_line(path, full) if path is not None else None
        problems.append(ConfigProblem(FILE, full, message, line))

    zone = _parse_zone(definition.timezone, problem)
    if definition.always:
        for key, given in (
            ("hours", bool(definition.hours)),
            ("holidays", bool(definition.holidays)),
            ("holiday_country", bool(definition.holiday_country)),
            ("holiday_subdivision", bool(definition.holiday_subdivision)),
        ):
            if given:
                problem(key, "must be left out when always = true (a 24/7 calendar never closes)")
        if problems or zone is None:
            return None, problems
        return Calendar(name, zone, always=True), problems

    weekly = _parse_hours(definition.hours, problem)
    holidays = _parse_holidays(definition, problem)
    if weekly is not None and not any(weekly):
        problem(
            "hours",
            "no open hours: give at least one weekday an interval, such as mon-fri = "
            '["08:00-18:00"], or set always = true for a 24/7 calendar',
        )
    if problems or zone is None or weekly is None or holidays is None:
        return None, problems
    return Calendar(name, zone, weekly, holidays), problems


def _parse_zone(name: str, problem: ProblemFn) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    message = f'{name!r} is not an IANA timezone name (such as "America/New_York" or "UTC")'
    close = difflib.get_close_matches(name, sorted(available_timezones()), n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    problem("timezone", message)
    return None


def _parse_hours(
    hours: Mapping[str, Sequence[str]], problem: ProblemFn
) -> tuple[tuple[Minutes, ...], ...] | None:
    days: list[list[Minutes]] = [[] for _ in WEEKDAYS]
    given_by: dict[int, str] = {}
    ok = True
    for key, texts in hours.items():
        indexes = _weekday_indexes(key)
        if indexes is None:
            problem(
                f"hours.{key}",
                f"unknown weekday {key!r}: use {', '.join(WEEKDAYS)} or a range such as mon-fri",
            )
            ok = False
            continue
        for index in indexes:
            if index in given_by:
                problem(
                    f"hours.{key}", f"{WEEKDAYS[index]} is already given by hours.{given_by[index]}"
                )
                ok = False
            given_by.setdefault(index, key)
        parsed: list[tuple[Minutes, int]] = []
        for i, text in enumerate(texts):
            interval = _parse_interval(text, f"hours.{key}[{i}]", problem)
            if interval is None:
                ok = False
            else:
                parsed.append((interval, i))
        parsed.sort()
        for (earlier, i_earlier), (later, i_later) in itertools.pairwise(parsed):
            if later[0] < earlier[1]:
                problem(
                    f"hours.{key}[{i_later}]",
                    f"{texts[i_later]!r} overlaps {texts[i_earlier]!r}",
                )
                ok = False
        for index in indexes:
            days[index].extend(interval for interval, _i in parsed)
    if not ok:
        return None
    return tuple(_merge_minutes(day) for day in days)


def _weekday_indexes(key: str) -> list[int] | None:
    first, _, last = key.partition("-")
    if first not in WEEKDAYS or (last and last not in WEEKDAYS):
        return None
    lo, hi = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
    if lo > hi:
        return None  # "fri-mon": spell a wrapping week as two keys, it reads less ambiguously
    return list(range(lo, hi + 1))


def _parse_interval(text: str, key: str, problem: ProblemFn) -> Minutes | None:
    match = _INTERVAL.fullmatch(text)
    values = [int(g) for g in match.groups()] if match else []
    clock_times = list(zip(values[0::2], values[1::2], strict=True))
    if not match or any(h > 24 or m > 59 or (h == 24 and m > 0) for h, m in clock_times):
        problem(key, f'"{text}" is not HH:MM-HH:MM (00:00 to 24:00; 24:00 ends the day)')
        return None
    start, end = values[0] * 60 + values[1], values[2] * 60 + values[3]
    if start >= end:
        problem(
            key,
            f'"{text}" does not end after it starts (an interval cannot cross midnight: end the '
            "day at 24:00 and open the next day at 00:00)",
        )
        return None
    if end == DAY_MINUTES - 1:
        problem(
            key,
            f'"{text}" ends at 23:59, which closes the calendar for a minute every midnight '
            "(Zammad #3180): write 24:00 for the end of the day",
        )
        return None
    return start, end


def _merge_minutes(intervals: list[Minutes]) -> tuple[Minutes, ...]:
    merged: list[Minutes] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def _parse_holidays(definition: CalendarDef, problem: ProblemFn) -> frozenset[dt.date] | None:
    dates: set[dt.date] = set()
    ok = True
    for i, value in enumerate(definition.holidays):
        if isinstance(value, dt.datetime):
            problem(
                f"holidays[{i}]", f"{value.isoformat()} has a time: give a date, such as 2026-12-25"
            )
            ok = False
        elif isinstance(value, dt.date):
            dates.add(value)
        elif isinstance(value, str) and _DATE.fullmatch(value):
            try:
                dates.add(dt.date.fromisoformat(value))
            except ValueError:
                problem(f"holidays[{i}]", f"{value!r} is not a real date")
                ok = False
        else:
            problem(f"holidays[{i}]", f"{value!r} is not a date such as 2026-12-25")
            ok = False
    country, subdivision = definition.holiday_country, definition.holiday_subdivision
    if subdivision and not country:
        problem("holiday_subdivision", "needs holiday_country")
        ok = False
    if country:
        found = _country_holidays(country, subdivision, problem)
        if found is None:
            ok = False
        else:
            dates |= found
    return frozenset(dates) if ok else None


def _country_holidays(country: str, subdivision: str, problem: ProblemFn) -> set[dt.date] | None:
    """Public holidays from the optional `holidays` package, expanded for HOLIDAY_YEARS.

    The package is not a dependency: an admin who wants it installs it, and is told so."""
    try:
        module = importlib.import_module("holidays")
    except ImportError:
        problem(
            "holiday_country",
            'needs the optional "holidays" package, which is not installed: install it '
            "(pip install holidays) or list the dates under holidays instead",
        )
        return None
    try:
        table: Iterable[object] = module.country_holidays(
            country, subdiv=subdivision or None, years=HOLIDAY_YEARS
        )
        return {day for day in table if isinstance(day, dt.date)}
    except (NotImplementedError, KeyError, ValueError) as exc:
        where = f"{country!r}" + (f" subdivision {subdivision!r}" if subdivision else "")
        problem("holiday_country", f"the holidays package does not know {where}: {exc}")
        return None
