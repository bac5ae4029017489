"""Periods: report windows, time buckets and budget periods, cut at local midnight.

Pure functions of (text, zone, now). Boundaries come back as aware UTC
datetimes, which is how the ledger stores time, so DST days are 23 or 25 hours
long exactly as the wall clock says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from ollama_meter._urls import quoted
from ollama_meter.errors import ValidationError

TIME_UNITS = ("day", "week", "month")
PERIOD_HELP = "today, week, month, YYYY-MM or YYYY-MM-DD"
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9998, 12, 31)
"""Days a period may start on: enough for any ledger, and far from the calendar's edges."""
EARLIEST = datetime.combine(FIRST_DAY, time.min, UTC)
"""The first instant the ledger takes; reports with no start begin there, in any zone."""
LATEST = datetime.combine(LAST_DAY + timedelta(days=1), time.min, UTC)
"""The instant after the last one the ledger takes."""
_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
"""ASCII digits only (``\\d`` would take '２０２６-１１' too)."""


def _in_range(day: date, what: str, tz: tzinfo | None = None, *, month: bool = False) -> date:
    """``day`` (the first of a month, with ``month``) if ometer works with it: a day from
    FIRST_DAY to LAST_DAY, or, cut in ``tz``, a day (month) that holds an instant the ledger
    takes. West of UTC the first hours of 1970 are 31 December 1969, which ``report --by
    month`` shows as 1969-12 (east of it, the last hours of 9998 are 9999-01-01): refusing
    that day and month left those calls in no bill, and out of reach of ``reprice --since``."""
    if FIRST_DAY <= day <= LAST_DAY:
        return day
    if tz is not None and FIRST_DAY - timedelta(days=31) <= day <= LAST_DAY + timedelta(days=1):
        after = next_month(day) if month else day + timedelta(days=1)
        if local_midnight(day, tz) < LATEST and local_midnight(after, tz) > EARLIEST:
            return day
    raise ValidationError(
        f"{what} {day.isoformat()} is outside the dates ometer works with "
        f"({FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()})"
    )


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open interval [start, end) of UTC time, with a label for humans."""

    start: datetime
    end: datetime
    label: str


def local_midnight(day: date, tz: tzinfo) -> datetime:
    """The UTC instant at which ``day`` starts in ``tz``.

    A midnight that comes twice (a clock turned back across it) is its first; one the
    clock skips is read before the jump (the instant of the jump, for a jump from 00:00).
    """
    return datetime.combine(day, time.min, tzinfo=tz).astimezone(UTC)


def day_of(moment: datetime, tz: tzinfo) -> date:
    """The day of ``tz`` that holds ``moment``: the last whose midnight is at or before it.

    Mostly the local clock's date, but not where the clock was turned back across midnight
    (St John's, Goose Bay and Moncton went from 00:01 back to 23:01 until 2011): the hour
    after the first midnight reads 23:xx of the day before, and is still in the new day, so
    that every day is one stretch of time, from its midnight to the next.
    """
    day = moment.astimezone(tz).date()
    if day < date.max and local_midnight(day + timedelta(days=1), tz) <= moment:
        return day + timedelta(days=1)
    if day > date.min and local_midnight(day, tz) > moment:
        return day - timedelta(days=1)  # a jump over midnight from before it
    return day


class Days:
    """:func:`day_of` in one zone, asked again and again of moments close together (a price
    book, at every call): the last day's stretch, from its midnight to the next, is kept,
    and a moment within it is that day without a look at the zone."""

    __slots__ = ("_known", "tz")

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._known: tuple[datetime, datetime, date] | None = None

    def of(self, moment: datetime) -> date:
        known = self._known  # one read: another thread may replace it meanwhile
        if known is not None and known[0] <= moment < known[1]:
            return known[2]
        day = day_of(moment, self.tz)
        if date.min < day < date.max:
            first, after = local_midnight(day, self.tz), local_midnight(day + timedelta(1), self.tz)
            if first <= moment < after:  # (the stretch day_of found it in)
                self._known = (first, after, day)
        return day


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _days(first: date, after_last: date, tz: ZoneInfo, label: str) -> Window:
    return Window(local_midnight(first, tz), local_midnight(after_last, tz), label)


def _held(window: Window, what: str, tz: ZoneInfo) -> Window:
    """``window`` if it holds any time: days a zone's clocks skipped (Apia went from 29 to 31
    December 2011) hold none, and were answered as a report of nothing, compared with a
    period "2011-12-31..2011-12-30"."""
    if window.start < window.end:
        return window
    raise ValidationError(
        f"{what} {window.label} holds no time in {tz}: its clocks skipped that day; "
        "name a day they showed"
    )


def parse_period(
    text: str, *, tz: ZoneInfo, now: datetime, what: str = "period", choices: str = PERIOD_HELP
) -> Window:
    """``today``, ``week`` (ISO, from Monday), ``month``, ``YYYY-MM`` or ``YYYY-MM-DD``.

    ``what`` names the option in errors (``--month``); ``choices``, what the caller takes."""
    today = day_of(now, tz)
    value = text.strip().lower()
    if value == "today":
        return _days(today, today + timedelta(days=1), tz, today.isoformat())
    if value == "week":
        first = week_start(today)
        iso = first.isocalendar()
        return _days(first, first + timedelta(days=7), tz, f"{iso.year}-W{iso.week:02d}")
    if value == "month":
        first = month_start(today)
        return _days(first, next_month(first), tz, first.strftime("%Y-%m"))
    if _MONTH.fullmatch(value):
        try:
            first = date.fromisoformat(value + "-01")
        except ValueError:
            raise ValidationError(
                f"{what} {quoted(text)} is not a month of the calendar; use YYYY-MM, such as 2026-11"
            ) from None
        _in_range(first, what, tz, month=True)
        return _days(first, next_month(first), tz, value)
    if _DAY.fullmatch(value):
        day = parse_day(value, what=what, tz=tz)
        return _held(_days(day, day + timedelta(days=1), tz, value), what, tz)
    raise ValidationError(f"{what} {quoted(text)} is not one of: {choices}")


def parse_day(text: str, *, what: str, tz: tzinfo | None = None) -> date:
    """A YYYY-MM-DD date ometer works with; with ``tz``, any day that holds an instant the
    ledger takes, cut in that zone (see :func:`_in_range`)."""
    try:
        # Only YYYY-MM-DD: date.fromisoformat() also takes '20261101' and '2026W481'
        # (the Monday of ISO week 48), which no one reading the command line would guess.
        if not _DAY.fullmatch(text.strip()):
            raise ValueError(text)
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(f"{what} {quoted(text)} is not a date; use YYYY-MM-DD") from None
    return _in_range(day, what, tz)


def window_between(
    since: str | None,
    until: str | None,
    *,
    tz: ZoneInfo,
    now: datetime,
    names: tuple[str, str] = ("--since", "--until"),
) -> Window:
    """From the start of ``since`` through the end of ``until`` (both local dates, inclusive).

    ``names``: what the caller calls the two dates in errors (options, or URL parameters).
    """
    since_name, until_name = names
    today = day_of(now, tz)
    # None is "not given"; "" was given, and is no date ('--since "$START"' with START unset
    # must not quietly mean "from the first day").
    first = FIRST_DAY if since is None else parse_day(since, what=since_name, tz=tz)
    last = today if until is None else parse_day(until, what=until_name, tz=tz)
    if last < first:
        if until is not None:
            raise ValidationError(f"{until_name} {last} is before {since_name} {first}")
        raise ValidationError(f"{since_name} {first} is after today ({last}); give a past date")
    label = f"{'start' if since is None else first.isoformat()}..{last.isoformat()}"
    window = _held(
        _days(first, last + timedelta(days=1), tz, label), f"{since_name}..{until_name}", tz
    )
    if since is None and window.start > EARLIEST:
        # West of UTC, local midnight on the first day is hours after the first instant the
        # ledger takes: the calls of those hours would be in no report.
        return Window(EARLIEST, window.end, label)
    return window


Bucket = tuple[datetime, datetime, str]
"""A time bucket: its start and end in UTC, and its label (``2026-11-30``, ``2026-W48``, ``2026-11``)."""


def walk_buckets(start: datetime, end: datetime, unit: str, tz: ZoneInfo) -> Iterator[Bucket]:
    """The buckets of ``unit`` from the one that holds ``start``, while they begin before ``end``."""
    if unit not in TIME_UNITS:
        raise ValueError(f"unknown time unit {unit!r}")
    day = day_of(start, tz)
    if unit == "week":
        day = week_start(day)
    elif unit == "month":
        day = month_start(day)
    begins = local_midnight(day, tz)
    while begins < end:
        if unit == "day":
            label, after = day.isoformat(), day + timedelta(days=1)
        elif unit == "week":
            iso = day.isocalendar()
            label, after = f"{iso.year}-W{iso.week:02d}", day + timedelta(days=7)
        else:
            label, after = day.strftime("%Y-%m"), next_month(day)
        ends = local_midnight(after, tz)
        yield begins, ends, label
        day, begins = after, ends


def bucket_bounds(window: Window, unit: str, tz: ZoneInfo) -> list[tuple[datetime, str]]:
    """Consecutive (start, label) buckets of ``unit`` covering ``window``, starts in UTC.

    Every bucket of the window, one for each day of it by day: for a window of reasonable
    size (a chart's axis). Reports build theirs with :func:`buckets_over`."""
    return [(start, label) for start, _, label in walk_buckets(window.start, window.end, unit, tz)]


def buckets_over(
    stretches: Iterable[tuple[datetime, datetime]], window: Window, unit: str, tz: ZoneInfo
) -> list[Bucket]:
    """The buckets of ``unit`` that overlap ``window`` and one of ``stretches``, in order, once.

    ``stretches`` (in time order, not overlapping) are where calls are: a report of a long
    window builds the buckets of the days that hold calls, not one for every day between.
    A bucket of no time (a day a zone skipped, as Apia did 2011-12-30) holds nothing.
    """
    found: list[Bucket] = []
    for start, end in stretches:
        lo, hi = max(start, window.start), min(end, window.end)
        if lo >= hi:
            continue
        for bucket in walk_buckets(lo, hi, unit, tz):
            if bucket[0] < bucket[1] and (not found or bucket[0] > found[-1][0]):
                found.append(bucket)
    return found


PERIOD_UNITS = {"day": "today", "week": "week", "month": "month"}


_CURRENT: dict[tuple[str, tzinfo], Window] = {}
"""The last period :func:`current_period` found for each unit and zone (a budget's, asked at
every call): a few entries, one a unit and zone in use."""
_CURRENT_KEPT = 64


def current_period(unit: str, *, tz: ZoneInfo, now: datetime) -> Window:
    """The day, ISO week or month that contains ``now`` in ``tz``.

    A period is the days from its first to its last, each one stretch of time from its
    midnight to the next (:func:`day_of`): any moment within the last one found is in it, and
    it is given again without a look at the zone (10 µs a call with a hard budget)."""
    key = (unit, tz)
    known = _CURRENT.get(key)  # one read: another thread may replace it meanwhile
    if known is not None and known.start <= now < known.end:
        return known
    window = parse_period(PERIOD_UNITS[unit], tz=tz, now=now)
    if window.start <= now < window.end:  # (a window that does not hold it is never kept)
        if len(_CURRENT) >= _CURRENT_KEPT:
            _CURRENT.clear()
        _CURRENT[key] = window
    return window
