"""A long window that holds few calls reads the cells of the days that hold them.

A report cut into local days of a zone other than the ledger's plans each day as a day
cell and up to 56 quarter hours: ``report --since 1970-01-01 --by day`` on a ledger of
three calls, one of them in 1970, planned 1.7 million cells (842 statements, 7 s; 10 s
with the zones the other way round). Buckets and stretches of buckets in which no call
started are not read now; the sums stay those of the raw spans.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.ledger._cells import Grain, floor_cell
from ollama_meter.ledger._meta import ledger_zone
from ollama_meter.ledger._plan import CUBE_GRAINS, HISTOGRAM_GRAINS, cell_signs, plan_cells
from ollama_meter.ledger._timings import HistogramResult
from ollama_meter.ledger._types import to_us
from ollama_meter.periods import Window, walk_buckets, window_between
from ollama_meter.records import SpanRecord
from ollama_meter.reports import chargeback, perf_report, spend_report
from tests.factories import make_span, opened
from tests.ledger.test_rollups import _fill

ZONES = [
    "UTC", "Etc/GMT-14", "Etc/GMT+12", "Asia/Kathmandu", "Europe/Berlin", "America/St_Johns",
    "Australia/Lord_Howe", "Pacific/Apia",
]  # fmt: skip
NOW = datetime(2027, 1, 1, tzinfo=UTC)
CELLS_PER_DAY = 250
"""Generous: a local day is a day cell and at most 2 x 48 quarter hours; a month bucket's
hull of days adds a month cell and its days either side."""


def every_bucket(window: Window, unit: str | None, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """(start, end) of every ``unit`` bucket of ``window``, none left out for having no calls."""
    if unit is None:
        return []
    return [(start, end) for start, end, _ in walk_buckets(window.start, window.end, unit, tz)]


def planned_cells(ledger: Ledger, window: Window, unit: str | None, tz: ZoneInfo) -> int:
    """How many rollup cells a read of ``window`` cut by ``unit`` plans, over both cubes."""
    starts = every_bucket(window, unit, tz)
    where = SpanFilter(since=window.start, until=window.end)
    with ledger.read() as conn:
        zone = ledger_zone(conn)
        total = 0
        for grains in (CUBE_GRAINS, HISTOGRAM_GRAINS):
            pieces = plan_cells(conn, where, starts, grains, zone)
            total += len(cell_signs([p for p in pieces if p.grain is not None], zone))
    return total


def days_held(moments: list[datetime], cells: ZoneInfo) -> int:
    return len({floor_cell(Grain.DAY, to_us(moment), cells) for moment in moments})


def counted(result: HistogramResult) -> dict[Any, Any]:
    """The bins that hold calls: a call subtracted at a raw edge leaves its group's metric
    empty (as it always has; reports read the bins of groups that made calls)."""
    groups = {
        key: {metric: bins for metric, bins in metrics.items() if bins}
        for key, metrics in result.groups.items()
    }
    return {key: metrics for key, metrics in groups.items() if metrics}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    moments=st.lists(
        st.datetimes(
            min_value=datetime(2023, 12, 25),
            max_value=datetime(2027, 1, 5),
            timezones=st.just(UTC),
        ),
        max_size=5,
    ),
    zone=st.sampled_from(ZONES),
    cells=st.sampled_from(ZONES),
    unit=st.sampled_from([None, "day", "week", "month"]),
)
def test_a_long_window_of_few_calls_plans_the_cells_of_their_days_and_sums_them_exactly(
    db_url: str, moments: list[datetime], zone: str, cells: str, unit: str | None
) -> None:
    with opened(db_url) as ledger:
        spans = spans_at(moments)
        _fill(ledger, [spans], ZoneInfo(cells))
        tz = ZoneInfo(zone)
        window = window_between("2024-01-01", "2026-12-31", tz=tz, now=NOW)  # 1,096 days
        assert planned_cells(ledger, window, unit, tz) <= CELLS_PER_DAY * days_held(
            moments, ZoneInfo(cells)
        )
        starts = every_bucket(window, unit, tz)
        where = SpanFilter(since=window.start, until=window.end)
        sums, histograms = ledger.timings(where, ["department"], starts)
        failures = ledger.failures(where)
        with raw_spans():
            raw_sums, raw_histograms = ledger.timings(where, ["department"], starts)
            assert sorted(failures) == sorted(ledger.failures(where))
        assert sorted(sums, key=repr) == sorted(raw_sums, key=repr)
        assert counted(histograms) == counted(raw_histograms)
        inside = [s for s in spans if window.start <= s.started_at < window.end]
        assert sum(s.requests for s in sums) == len(inside)
        assert sum(s.cost for s in sums) == sum(s.cost_total for s in inside)


def test_report_since_1970_by_day_in_another_zone_reads_the_two_days_of_its_calls(
    sqlite_url: str,
) -> None:
    ledger = Ledger(sqlite_url)  # days and months of UTC
    first, last = datetime(1970, 1, 2, 3, tzinfo=UTC), datetime(2026, 11, 10, 12, tzinfo=UTC)
    ledger.record(
        [make_span(started_at=first, cost_total=5), make_span(started_at=last, cost_total=7)]
    )
    for zone, labels in {
        "Etc/GMT-14": {"day": ["1970-01-02", "2026-11-11"], "week": ["1970-W01", "2026-W46"]},
        "Etc/GMT+12": {"day": ["1970-01-01", "2026-11-10"], "week": ["1970-W01", "2026-W46"]},
    }.items():
        tz = ZoneInfo(zone)
        labels["month"] = ["1970-01", "2026-11"]
        window = window_between("1970-01-01", "2026-12-31", tz=tz, now=NOW)
        for unit in ("day", "week", "month"):
            assert planned_cells(ledger, window, unit, tz) <= 2 * CELLS_PER_DAY
            report = spend_report(ledger, window, [unit], tz=tz)
            assert [(r.label(unit), r.requests, int(r.cost)) for r in report.rows] == [
                (labels[unit][0], 1, 5),
                (labels[unit][1], 1, 7),
            ]
            perf = perf_report(ledger, window, [], unit=unit, tz=tz)
            assert [row.label(unit) for row in perf.rows] == labels[unit]
        for month, cost in (("1970-01", 5), ("2026-11", 7)):
            bill = chargeback(ledger, month, tz=tz, now=NOW, currency="USD", fixed_cost=Decimal(0))
            assert [int(row.usage_cost) for row in bill.rows] == [cost]


def spans_at(moments: list[datetime]) -> list[SpanRecord]:
    """A call at each of ``moments``, departments taking turns, each costing one more."""
    return [
        make_span(
            started_at=moment,
            department=["sales", "ops"][index % 2],
            cost_total=index + 1,
            latency_ns=10**6 * (index + 1),
        )
        for index, moment in enumerate(moments)
    ]
