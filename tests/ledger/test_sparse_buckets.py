"""A window of millennia builds the buckets of its calls, not one for every day it spans.

``ometer report --since 1970-01-01 --until 9998-12-31 --by day`` on a ledger of two calls,
one on 1970-01-02 and one on 9998-12-30, built 2.9 million day buckets (6 s, 1 GB), and its
HTML chart had an axis of as many days (22 s, 1.7 GB): the window was cut to the first and
last call, and walked day by day in between. Buckets now come from the ledger's cells that
hold calls, and the rows and sums stay exactly those of the raw spans.

Work is counted, never timed: the buckets built, the cells planned, the statements run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import event

from ollama_meter.ledger import Ledger
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.ledger._cells import Grain, floor_cell
from ollama_meter.ledger._types import to_us
from ollama_meter.periods import (
    bucket_bounds,
    buckets_over,
    day_of,
    walk_buckets,
    week_start,
    window_between,
)
from ollama_meter.reports import DashQuery, dashboard_report, perf_report, spend_report
from ollama_meter.reports._spend import held_buckets, spend_axis
from tests.factories import make_span, opened
from tests.ledger.test_rollups import _fill
from tests.ledger.test_sparse_windows import CELLS_PER_DAY, NOW, ZONES, planned_cells, spans_at

STATEMENTS = 16
"""What one report may run, whatever its window: the ledger's zone, the cells that hold
calls (to build the buckets, then to plan them), the sums, and the raw edges."""


def label_of(moment: datetime, unit: str, tz: ZoneInfo) -> str:
    """The ``unit`` bucket of ``tz`` that ``moment`` is in, as reports label it."""
    day = day_of(moment, tz)
    if unit == "day":
        return day.isoformat()
    if unit == "week":
        iso = week_start(day).isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    return day.strftime("%Y-%m")


def cells_held(moments: list[datetime], unit: str, cells: ZoneInfo) -> int:
    """How many of the ledger's cells hold the calls: months for months, days otherwise."""
    grain = Grain.MONTH if unit == "month" else Grain.DAY
    return len({floor_cell(grain, to_us(moment), cells) for moment in moments})


@contextlib.contextmanager
def statements(ledger: Ledger) -> Iterator[list[str]]:
    """The SQL statements run on ``ledger`` in the block."""
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    event.listen(ledger.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(ledger.engine, "before_cursor_execute", count)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    moments=st.lists(
        st.datetimes(
            min_value=datetime(1970, 1, 1),
            max_value=datetime(9998, 12, 30),
            timezones=st.just(UTC),
        ),
        max_size=4,
    ),
    near=st.lists(st.integers(0, 40 * 24), max_size=3),
    zone=st.sampled_from(ZONES),
    cells=st.sampled_from(ZONES),
    unit=st.sampled_from(["day", "week", "month"]),
)
def test_a_window_of_millennia_builds_the_buckets_of_its_calls_and_sums_them_exactly(
    db_url: str,
    moments: list[datetime],
    near: list[int],
    zone: str,
    cells: str,
    unit: str,
) -> None:
    # Calls far apart, and a few hours after the first of them (in its bucket, or next ones).
    moments = moments + [moments[0] + timedelta(hours=hours) for hours in near if moments]
    with opened(db_url) as ledger:
        spans = spans_at(moments)
        _fill(ledger, [spans], ZoneInfo(cells))
        tz = ZoneInfo(zone)
        window = window_between("1970-01-01", "9998-12-31", tz=tz, now=NOW)
        inside = [s for s in spans if window.start <= s.started_at < window.end]
        held = sorted({label_of(s.started_at, unit, tz) for s in inside})

        built = held_buckets(ledger, window, unit, tz)
        labels = [label for _, _, label in built]
        assert labels == sorted(set(labels))  # in time order, each once
        assert set(held) <= set(labels)
        # A cell of the ledger's days (or months) overlaps at most three buckets of another zone;
        # cut at the same midnights, a bucket is built only if a call is in it.
        assert len(built) <= 3 * cells_held([s.started_at for s in inside], unit, ZoneInfo(cells))
        if zone == cells:
            assert labels == held

        with statements(ledger) as run:
            report = spend_report(ledger, window, ["department", unit], tz=tz)
        assert len(run) <= STATEMENTS, run
        assert sorted({row.label(unit) for row in report.rows}) == held  # no row without calls
        assert sum(r.requests for r in report.rows) == len(inside)
        assert sum(int(r.cost) for r in report.rows) == sum(s.cost_total for s in inside)
        perf = perf_report(ledger, window, [], unit=unit, tz=tz)
        assert [row.label(unit) for row in perf.rows] == held
        by_user = perf_report(ledger, window, ["user"], unit=unit, tz=tz)  # histograms of raw spans
        with raw_spans():
            assert report.rows == spend_report(ledger, window, ["department", unit], tz=tz).rows
            assert perf.rows == perf_report(ledger, window, [], unit=unit, tz=tz).rows
            assert by_user.rows == perf_report(ledger, window, ["user"], unit=unit, tz=tz).rows


def test_the_calls_of_1970_and_9998_are_two_buckets_and_a_chart_of_two_columns(
    sqlite_url: str,
) -> None:
    ledger = Ledger(sqlite_url)
    first, last = datetime(1970, 1, 2, 3, tzinfo=UTC), datetime(9998, 12, 30, 12, tzinfo=UTC)
    ledger.record(
        [make_span(started_at=first, cost_total=5), make_span(started_at=last, cost_total=7)]
    )
    for zone in ("UTC", "Asia/Kathmandu", "Etc/GMT-14"):
        tz = ZoneInfo(zone)
        window = window_between("1970-01-01", "9998-12-31", tz=tz, now=NOW)
        # Without buckets, the window is planned as the cells of its two days, not of the
        # 96,000 months from the first call to the last.
        assert planned_cells(ledger, window, None, tz) <= 2 * CELLS_PER_DAY
        for unit, labels in {
            "day": [label_of(first, "day", tz), label_of(last, "day", tz)],
            "month": ["1970-01", "9998-12"],
        }.items():
            assert len(held_buckets(ledger, window, unit, tz)) <= 6
            with statements(ledger) as run:
                report = spend_report(ledger, window, [unit], tz=tz)
            assert len(run) <= STATEMENTS
            assert [(r.label(unit), r.requests, int(r.cost)) for r in report.rows] == [
                (labels[0], 1, 5),
                (labels[1], 1, 7),
            ]
            # Calls 8,000 years apart: the chart's axis is the buckets that hold them.
            assert spend_axis(report, report.rows, unit, tz) == labels


def test_a_charts_axis_has_every_bucket_of_a_window_of_reasonable_size(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    tz = ZoneInfo("Europe/Berlin")
    calls = [datetime(2026, 11, 3, 9, tzinfo=UTC), datetime(2026, 11, 20, 9, tzinfo=UTC)]
    ledger.record([make_span(started_at=moment) for moment in calls])
    november = window_between("2026-11-01", "2026-11-30", tz=tz, now=NOW)
    report = spend_report(ledger, november, ["day"], tz=tz)
    assert [r.label("day") for r in report.rows] == ["2026-11-03", "2026-11-20"]
    days = [f"2026-11-{day:02d}" for day in range(1, 31)]
    assert spend_axis(report, report.rows, "day", tz) == days  # days of no call are 0
    # A window of more than 400 days starts at the first bucket with calls, as it did.
    since_1970 = window_between("1970-01-01", "2026-11-30", tz=tz, now=NOW)
    report = spend_report(ledger, since_1970, ["day"], tz=tz)
    assert spend_axis(report, report.rows, "day", tz) == days[2:]
    weeks = spend_report(ledger, since_1970, ["week"], tz=tz)
    assert spend_axis(weeks, weeks.rows, "week", tz) == [f"2026-W{week}" for week in range(45, 50)]


SCANS = [["SCAN", table] for table in ("spans", "rollups", "rollup_histograms")]
"""A plan's steps that read a ledger table (or its index) from end to end."""


def test_the_dashboard_over_twenty_years_reads_no_ledger_table_through(sqlite_url: str) -> None:
    """Every statement of ``/api/dash`` over 20 years seeks in an index, never scans one: a
    window as long as the dashboard takes asked for the first and last call (a min and a max
    together, which SQLite reads through the whole index) six times, 210 of its 290 ms on a
    ledger of 200,000 spans."""
    ledger = Ledger(sqlite_url)
    calls = [datetime(2007, 1, 3, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)]
    ledger.record([make_span(started_at=moment, cost_total=3) for moment in calls])
    tz = ZoneInfo("Asia/Kathmandu")
    query = DashQuery(period="custom", since="2006-12-02", until="2026-11-30")
    with statements(ledger) as run:
        dash = dashboard_report(ledger, query, tz=tz, now=NOW).to_json()
    assert dash["summary"]["requests"] == 2
    with ledger.engine.connect() as conn:
        for sql in set(run):
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", _nulls(sql)).all()
            scans = [step[3] for step in plan if step[3].split()[:2] in SCANS]
            assert scans == [], sql


def _nulls(sql: str) -> tuple[None, ...]:
    """Any values for the statement's parameters: a plan does not depend on them."""
    return (None,) * sql.count("?")


@settings(max_examples=200, deadline=None)
@given(
    zone=st.sampled_from([*ZONES, "Pacific/Apia"]),
    unit=st.sampled_from(["day", "week", "month"]),
    stretches=st.lists(
        st.tuples(st.integers(0, 2 * 24 * 1000), st.integers(1, 24 * 40)), max_size=6
    ),
)
def test_the_buckets_over_stretches_are_those_of_the_calendar_that_overlap_them(
    zone: str, unit: str, stretches: list[tuple[int, int]]
) -> None:
    tz = ZoneInfo(zone)
    window = window_between("2010-01-01", "2012-03-31", tz=tz, now=NOW)  # Apia's lost day
    origin = datetime(2009, 11, 1, tzinfo=UTC)  # from two months before to three after
    runs: list[tuple[datetime, datetime]] = []
    for start, hours in sorted(stretches):  # half hours from the origin, and a length in hours
        lo = origin + timedelta(minutes=30 * start)
        hi = lo + timedelta(hours=hours)
        if runs and lo <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(hi, runs[-1][1]))
        else:
            runs.append((lo, hi))
    every = list(walk_buckets(window.start, window.end, unit, tz))
    assert bucket_bounds(window, unit, tz) == [(start, label) for start, _, label in every]
    assert buckets_over(runs, window, unit, tz) == [
        (start, end, label)
        for start, end, label in every
        if start < end
        and any(max(start, lo, window.start) < min(end, hi, window.end) for lo, hi in runs)
    ]
    whole = buckets_over([(window.start, window.end)], window, unit, tz)
    assert whole == [bucket for bucket in every if bucket[0] < bucket[1]]  # but Apia's lost day
