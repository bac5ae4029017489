"""Days and months where a zone's clock falls back across midnight: until 2011 St John's,
Goose Bay and Moncton turned the clock back at 00:01 to 23:01, so midnight came twice, with
an hour of the day before between. Each instant is still in exactly one day cell, the cells
tile time, and a day's cell and its report window are the same stretch."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.ledger import Ledger
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.ledger._cells import QUARTER_US, Grain, floor_cell, next_cell
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.periods import current_period, local_midnight, parse_period, window_between
from ollama_meter.reports import spend_report
from tests.factories import make_span

TWICE_MIDNIGHT = [
    ("America/St_Johns", date(1987, 10, 25)),
    ("America/St_Johns", date(2010, 11, 7)),
    ("America/Goose_Bay", date(1988, 10, 30)),
    ("America/Moncton", date(1993, 10, 31)),
    ("America/Havana", date(2026, 11, 1)),  # back from 01:00 to 00:00: midnight twice, one date
    ("America/Santiago", date(2026, 9, 6)),  # forward from 00:00 to 01:00: no midnight
    ("Pacific/Apia", date(2011, 12, 30)),  # a day skipped
    # back from 24:00 to 23:00 today: midnight comes once, at the end of a 25-hour day
    ("Africa/Cairo", date(2026, 10, 30)),
    ("Asia/Beirut", date(2026, 10, 25)),
    ("America/Santiago", date(2026, 4, 5)),
]


@pytest.mark.parametrize(("name", "day"), TWICE_MIDNIGHT)
def test_cells_tile_the_days_around_a_midnight_that_comes_twice(name: str, day: date) -> None:
    zone = ZoneInfo(name)
    lo = to_us(datetime.combine(day - timedelta(days=2), datetime.min.time(), UTC))
    for grain in (Grain.DAY, Grain.MONTH):
        t = lo
        while t < lo + 4 * 86_400 * 10**6:
            start = floor_cell(grain, t, zone)
            end = next_cell(grain, start, zone)
            assert start <= t < end, (grain, from_us(t).astimezone(zone))
            assert floor_cell(grain, end, zone) == end
            assert floor_cell(grain, end - 1, zone) == start
            t += QUARTER_US


@pytest.mark.parametrize(("name", "day"), TWICE_MIDNIGHT)
def test_a_day_in_the_ledger_zone_is_its_cell(name: str, day: date) -> None:
    zone = ZoneInfo(name)
    for d in (day - timedelta(days=1), day, day + timedelta(days=1)):
        start, end = (to_us(local_midnight(x, zone)) for x in (d, d + timedelta(days=1)))
        if start == end:
            continue  # Apia's 30 December 2011: no day at all
        assert floor_cell(Grain.DAY, start, zone) == start
        assert next_cell(Grain.DAY, start, zone) == end


@pytest.mark.parametrize(("name", "day"), TWICE_MIDNIGHT)
def test_the_period_of_any_moment_holds_it(name: str, day: date) -> None:
    """Budgets key their spend by the day that holds the call: that window holds it."""
    zone = ZoneInfo(name)
    at = local_midnight(day, zone) - timedelta(hours=3)
    while at < local_midnight(day, zone) + timedelta(hours=3):
        for unit in ("day", "week", "month"):
            window = current_period(unit, tz=zone, now=at)
            assert window.start <= at < window.end, (unit, at.astimezone(zone))
        at += timedelta(minutes=7)


def test_a_report_across_st_johns_1987_fall_back_is_the_raw_report(db_url: str) -> None:
    """On a St John's ledger, ``report --period 1987-10-25 --by day`` ran forever (the day's
    end was its own start) and 24 October said 18 calls where its spans were 14."""
    zone = ZoneInfo("America/St_Johns")
    ledger = Ledger(db_url, zone="America/St_Johns")
    at = datetime(1987, 10, 25, 3, tzinfo=UTC)  # 23:29 on the 24th, after the first midnight
    ledger.record(
        [make_span(started_at=at + timedelta(minutes=15 * n), cost_total=n) for n in range(-16, 16)]
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for period in ("1987-10-24", "1987-10-25", "1987-10"):
        window = parse_period(period, tz=zone, now=now)
        for by in ([], ["day"]):
            report = spend_report(ledger, window, by, tz=zone)
            with raw_spans():
                assert report.rows == spend_report(ledger, window, by, tz=zone).rows
    day = spend_report(ledger, parse_period("1987-10-24", tz=zone, now=now), [], tz=zone)
    assert [row.requests for row in day.rows] == [14]  # from 21:00 until 02:30 UTC


def test_a_long_report_holds_a_call_in_the_hour_after_the_first_midnight(db_url: str) -> None:
    """A window over 400 days is first cut to the days holding calls, each call's day read
    from its clock: a call at 23:29 on the clock, after St John's first midnight of 25
    October 1987, was cut out, and 'report --since 1970-01-01' said nothing at all."""
    zone = ZoneInfo("America/St_Johns")
    ledger = Ledger(db_url)
    ledger.record([make_span(started_at=datetime(1987, 10, 25, 3, tzinfo=UTC))])
    now = datetime(2026, 12, 1, tzinfo=UTC)
    for since in ("1970-01-01", "1987-10-25"):
        window = window_between(since, "2026-11-30", tz=zone, now=now)
        assert [r.requests for r in spend_report(ledger, window, [], tz=zone).rows] == [1]


@pytest.mark.parametrize("cells", ["zone", "UTC"])
@pytest.mark.parametrize(
    ("name", "day"),
    [("Africa/Cairo", date(2026, 10, 30)), ("Asia/Beirut", date(2026, 10, 25)),
     ("America/Santiago", date(2026, 4, 5))],
)  # fmt: skip
def test_todays_falls_back_at_24_00_split_days_at_the_midnight_the_clock_reads(
    db_url: str, name: str, day: date, cells: str
) -> None:
    """Cairo, Beirut and Santiago turn the clock back from 24:00 to 23:00: midnight is the
    transition's instant, never read on the clock, and comes an hour later. Each day of a
    report (from rollups cut in the zone, or in UTC) holds the calls from the midnight the
    clock reads to the next, as raw spans say: the day before is 25 hours long."""
    zone = ZoneInfo(name)
    ledger = Ledger(db_url, zone=name if cells == "zone" else "UTC")
    first = local_midnight(day, zone)
    spans = [
        make_span(started_at=first + timedelta(minutes=10 * n), cost_total=n + 100)
        for n in range(-12, 12)
    ]
    ledger.record(spans)
    now = datetime(2027, 1, 1, tzinfo=UTC)
    for d in (day - timedelta(days=1), day):
        window = parse_period(d.isoformat(), tz=zone, now=now)
        report = spend_report(ledger, window, ["day"], tz=zone)
        want = [s for s in spans if window.start <= s.started_at < window.end]
        assert len(want) == 12  # the two hours before the midnight, and after it
        assert [(r.label("day"), r.requests, int(r.cost)) for r in report.rows] == [
            (d.isoformat(), len(want), sum(s.cost_total for s in want))
        ]
        with raw_spans():
            assert report.rows == spend_report(ledger, window, ["day"], tz=zone).rows
    ledger.dispose()
