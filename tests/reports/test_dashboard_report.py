"""The dashboard's reports against sums computed here from the spans themselves."""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import Budget, BudgetStatus
from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger
from ollama_meter.ledger._cells import duration_bin
from ollama_meter.meter import SpanRecord
from ollama_meter.periods import Window
from ollama_meter.pricing import format_micros
from ollama_meter.reports import (
    DashQuery,
    SpendRow,
    dashboard_report,
    failures_report,
    parse_period,
    percentile,
    perf_report,
    spend_report,
)
from ollama_meter.reports._dashboard import chart_unit, dash_window, previous_window
from ollama_meter.reports._dashboard_json import budget_json
from tests._templates import LedgerTemplates
from tests.factories import OFFICE_NOW, make_span, office_spans, opened, two_currencies

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NOVEMBER_START = datetime(2026, 11, 1, tzinfo=UTC)
OCTOBER_START = datetime(2026, 10, 1, tzinfo=UTC)


def model_of(span: SpanRecord) -> str:
    return span.response_model or span.request_model


def between(spans: list[SpanRecord], start: datetime, end: datetime) -> list[SpanRecord]:
    return [s for s in spans if start <= s.started_at < end]


SPANS = office_spans()
"""The office's spans, once per process: each test's ledger is a copy of one that recorded
them (tests/_templates.py), and the sums here are taken from them."""


@pytest.fixture
def spans() -> list[SpanRecord]:
    return SPANS


def _recorded(url: str) -> Ledger:
    ledger = Ledger(url)
    ledger.record(SPANS)
    return ledger


@pytest.fixture
def ledger(db_url: str, templates: LedgerTemplates) -> Ledger:
    templates.copy(db_url, "test_dashboard_report's office", _recorded)
    return Ledger(db_url)


def test_month_so_far_matches_the_spans(ledger: Ledger, spans: list[SpanRecord]) -> None:
    d = dashboard_report(ledger, DashQuery(period="month"), tz=UTC_ZONE, now=OFFICE_NOW)
    month = between(spans, NOVEMBER_START, OFFICE_NOW + timedelta(days=30))
    assert d.window.label == "2026-11" and d.unit == "day" and len(d.buckets) == 30
    data = d.to_json()
    assert data["currencies"] == ["USD"]
    assert data["spend"][0]["cost"] == format_micros(sum(s.cost_total for s in month))
    assert data["summary"]["requests"] == len(month)
    assert data["summary"]["errors"] == sum(s.status == "error" for s in month)
    assert data["summary"]["input_tokens"] == sum(s.input_tokens for s in month)
    assert data["summary"]["unpriced_requests"] == sum(s.unpriced_usage for s in month)
    # The comparison: the same stretch of October, up to the 20th at 15:00.
    earlier = between(spans, OCTOBER_START, datetime(2026, 10, 20, 15, tzinfo=UTC))
    assert data["period"]["previous"]["end"] == "2026-10-20T15:00:00.000000Z"
    assert data["spend"][0]["previous_cost"] == format_micros(sum(s.cost_total for s in earlier))
    assert data["period"]["previous"]["requests"] == len(earlier)
    # Per department per day, every cell; and the per-day calls with every bucket present.
    cells: dict[tuple[str, str], int] = defaultdict(int)
    for s in month:
        cells[(s.department, s.started_at.date().isoformat())] += s.cost_total
    assert {(r["department"], r["day"]): r["cost"] for r in data["spend_by_department_by_day"]} == {
        key: format_micros(cost) for key, cost in cells.items()
    }
    per_day = Counter(s.started_at.date().isoformat() for s in month)
    assert [(r["day"], r["requests"]) for r in data["requests_by_day"]] == [
        (day, per_day.get(day, 0)) for day in d.buckets
    ]


def test_drill_down_and_top_lists(ledger: Ledger, spans: list[SpanRecord]) -> None:
    d = dashboard_report(ledger, DashQuery(period="month"), tz=UTC_ZONE, now=OFFICE_NOW)
    month = between(spans, NOVEMBER_START, OFFICE_NOW)
    data = d.to_json()
    for dept in data["departments"]:
        mine = [s for s in month if s.department == dept["department"]]
        assert dept["cost"] == format_micros(sum(s.cost_total for s in mine))
        by_model: dict[str, int] = defaultdict(int)
        for s in mine:
            by_model[model_of(s)] += s.cost_total
        assert [(m["model"], m["cost"]) for m in dept["models"]] == [
            (name, format_micros(cost))
            for name, cost in sorted(by_model.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        assert sum(u["requests"] for u in dept["users"]) == len(mine)
        assert sum(Decimal(day["cost"]) for day in dept["day"]) == Decimal(dept["cost"])
    by_user: dict[str, int] = defaultdict(int)
    for s in month:
        by_user[s.user or ""] += s.cost_total
    assert [(u["user"], u["cost"]) for u in data["top_users"]] == [
        (name, format_micros(cost))
        for name, cost in sorted(by_user.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    ]
    assert data["models"][0]["model"] == "llama3.1:70b"  # the expensive one


def test_filters_narrow_every_figure(ledger: Ledger, spans: list[SpanRecord]) -> None:
    query = DashQuery(period="month", tenant="acme", department="sales", model="llama3.1:8b")
    data = dashboard_report(ledger, query, tz=UTC_ZONE, now=OFFICE_NOW).to_json()
    mine = [
        s
        for s in between(spans, NOVEMBER_START, OFFICE_NOW)
        if s.tenant == "acme" and s.department == "sales" and model_of(s) == "llama3.1:8b"
    ]
    assert data["summary"]["requests"] == len(mine) > 0
    assert data["spend"][0]["cost"] == format_micros(sum(s.cost_total for s in mine))
    assert {r["model"] for r in data["timing_by_model"]} == {"llama3.1:8b"}
    assert [d["department"] for d in data["departments"]] == ["sales"]
    assert data["filters"] == {"tenant": "acme", "department": "sales", "model": "llama3.1:8b"}


def test_where_the_time_goes(ledger: Ledger, spans: list[SpanRecord]) -> None:
    d = dashboard_report(ledger, DashQuery(period="week"), tz=UTC_ZONE, now=OFFICE_NOW)
    week = between(spans, datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC))
    data = d.to_json()
    for row in data["timing_by_day"]:
        day = [s for s in week if s.started_at.date().isoformat() == row["day"]]
        latencies = sorted(s.latency_ns for s in day if s.latency_ns is not None)
        p95 = percentile(latencies, 95)
        assert p95 is not None  # percentiles are read from bins: the edge of the true one's
        assert row["latency_p95_ms"] == f"{Decimal(duration_bin(p95)) / 10**6:.3f}"
        assert row["requests"] == len(day)
    failures = Counter((s.status, s.error_type) for s in week if s.status != "ok")
    assert {(f["status"], f["error_type"]): f["requests"] for f in data["failures"]} == failures
    cold = Counter(model_of(s) for s in week if (s.load_duration_ns or 0) >= 100_000_000)
    assert {r["model"]: r["cold_loads"] for r in data["timing_by_model"] if r["cold_loads"]} == cold


def test_budgets_carry_exact_shares_and_projections(
    ledger: Ledger, spans: list[SpanRecord]
) -> None:
    ledger.save_budget(Budget("acme", "sales", "month", 120_000_000, "USD"))
    ledger.save_budget(Budget("globex", None, "month", 1_000_000, "USD", hard=False))
    data = dashboard_report(ledger, DashQuery(), tz=UTC_ZONE, now=OFFICE_NOW).to_json()
    sales = sum(
        s.cost_total
        for s in between(spans, NOVEMBER_START, OFFICE_NOW)
        if (s.tenant, s.department) == ("acme", "sales")
    )
    budgets = {b["scope"]: b for b in data["budgets"]}
    assert budgets["acme/sales"]["spent"] == format_micros(sales)
    share = Decimal(sales * 100) / 120_000_000
    assert budgets["acme/sales"]["percent"] == f"{share.quantize(Decimal('0.1')):f}"
    # 19 days and 15 hours of a 30-day month: the pace so far, to the end
    projected = sales * 30 * 24 * 3600 * 1000 // ((19 * 24 + 15) * 3600 * 1000)
    assert budgets["acme/sales"]["projected"] == format_micros(projected)
    assert budgets["globex"]["state"] == "over"  # soft: over, not exhausted
    only_acme = dashboard_report(ledger, DashQuery(tenant="acme"), tz=UTC_ZONE, now=OFFICE_NOW)
    assert [b.budget.scope() for b in only_acme.budgets] == ["acme/sales"]
    only_support = dashboard_report(
        ledger, DashQuery(department="support"), tz=UTC_ZONE, now=OFFICE_NOW
    )
    assert [b.budget.scope() for b in only_support.budgets] == ["globex"]  # tenant-wide


def test_currencies_are_never_added_together(db_url: str) -> None:
    ledger = Ledger(db_url)
    ledger.record(two_currencies(datetime(2026, 11, 3, 9, tzinfo=UTC)))
    data = dashboard_report(ledger, DashQuery(), tz=UTC_ZONE, now=OFFICE_NOW).to_json()
    assert data["currencies"] == ["EUR", "USD"]
    assert [(s["currency"], s["cost"]) for s in data["spend"]] == [
        ("EUR", "1.200000"),
        ("USD", "1.250000"),
    ]
    assert data["summary"]["requests"] == 3  # counts span currencies; money never does
    assert sorted((d["department"], d["currency"], d["cost"]) for d in data["departments"]) == [
        ("legal", "EUR", "0.500000"),
        ("sales", "EUR", "0.700000"),
        ("sales", "USD", "1.250000"),
    ]
    assert_every_amount_has_a_currency(data)


def assert_every_amount_has_a_currency(value: Any) -> None:
    """Each object with a money key also names its currency."""
    if isinstance(value, dict):
        money = {"cost", "previous_cost", "spent", "limit", "projected", "held"} & set(value)
        assert not money or "currency" in value, value
        for item in value.values():
            assert_every_amount_has_a_currency(item)
    elif isinstance(value, list):
        for item in value:
            assert_every_amount_has_a_currency(item)


_amounts = st.lists(
    st.tuples(
        st.sampled_from(["USD", "EUR", "CHF"]),
        st.sampled_from(["sales", "support", "legal"]),
        st.integers(min_value=0, max_value=10**12),
        st.integers(min_value=0, max_value=19),  # day of the month, less one
    ),
    min_size=1,
    max_size=12,
)


_example = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=_amounts)
def test_per_currency_sums_hold_for_any_mix(
    sqlite_url: str, calls: list[tuple[str, str, int, int]]
) -> None:
    with opened(sqlite_url) as ledger:
        name = f"t{next(_example)}"  # one tenant per example: examples share the ledger
        ledger.record(
            [
                make_span(
                    started_at=NOVEMBER_START + timedelta(days=day, hours=8),
                    tenant=name,
                    department=dept,
                    currency=currency,
                    cost_total=cost,
                )
                for currency, dept, cost, day in calls
            ]
        )
        data = dashboard_report(
            ledger, DashQuery(tenant=name), tz=UTC_ZONE, now=OFFICE_NOW
        ).to_json()
        expected: dict[str, int] = defaultdict(int)
        for currency, _, cost, _ in calls:
            expected[currency] += cost
        assert {s["currency"]: s["cost"] for s in data["spend"]} == {
            c: format_micros(v) for c, v in expected.items()
        }
        for section in ("spend_by_department_by_day", "departments", "models", "top_users"):
            sums: dict[str, Decimal] = defaultdict(Decimal)
            for row in data[section]:
                sums[row["currency"]] += Decimal(row["cost"])
            assert sums == {c: Decimal(format_micros(v)) for c, v in expected.items()}, section
        assert_every_amount_has_a_currency(data)


@pytest.mark.parametrize(
    ("query", "label"),
    [
        (DashQuery(period="today"), "2026-11-20"),
        (DashQuery(period="week"), "2026-W47"),
        (DashQuery(period="month"), "2026-11"),
        (DashQuery(period="previous-month"), "2026-10"),
        (DashQuery(period="2025-02"), "2025-02"),
        (
            DashQuery(period="custom", since="2026-09-01", until="2026-09-30"),
            "2026-09-01..2026-09-30",
        ),
        (DashQuery(since="2026-09-01"), "2026-09-01..2026-11-20"),
    ],
)
def test_period_choices(query: DashQuery, label: str) -> None:
    assert dash_window(query, tz=UTC_ZONE, now=OFFICE_NOW).label == label


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (DashQuery(period="fortnight"), "is not one of: today, week, month, previous-month,"),
        (DashQuery(period="week", until="2026-11-10"), "'week' and since/until ask for different"),
        (DashQuery(period="custom"), "needs a start date"),
        (DashQuery(period="custom", since="2026-13-01"), "is not a date"),
        (DashQuery(period="custom", since="2026-11-02", until="2026-11-01"), "is before"),
        (DashQuery(period="custom", since="0001-01-01", until="0001-01-05"), "outside the dates"),
        (DashQuery(period="9999-12"), "outside the dates"),
        (
            DashQuery(period="custom", since="1970-01-01", until="9998-12-31"),
            r"at most 20 years \(1970-01-01\.\.9998-12-31 is longer\)",
        ),
        (DashQuery(since="2000-01-01", until="2020-01-01"), "at most 20 years"),
    ],
)
def test_bad_periods_are_one_line_errors(db_url: str, query: DashQuery, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        dashboard_report(Ledger(db_url), query, tz=UTC_ZONE, now=OFFICE_NOW)


def test_twenty_years_is_the_longest_range() -> None:
    """A point a month on the trend: 240 at most (8,029 years were 96,000 points and 4 s).

    A range from 29 February ends on 28 February 20 years on."""
    query = DashQuery(since="2000-01-01", until="2019-12-31")
    window = dash_window(query, tz=UTC_ZONE, now=OFFICE_NOW)
    assert window.label == "2000-01-01..2019-12-31"
    assert chart_unit(window) == "month"
    leap = dash_window(
        DashQuery(since="2004-02-29", until="2024-02-28"), tz=UTC_ZONE, now=OFFICE_NOW
    )
    assert leap.label == "2004-02-29..2024-02-28"
    with pytest.raises(ValidationError, match="at most 20 years"):
        dash_window(DashQuery(since="2004-02-29", until="2024-02-29"), tz=UTC_ZONE, now=OFFICE_NOW)


@given(
    first=st.dates(min_value=date(2001, 1, 1), max_value=date(2098, 12, 31)),
    days=st.integers(min_value=1, max_value=400),
    into=st.floats(min_value=-2, max_value=2),
    zone=st.sampled_from([UTC_ZONE, BERLIN, ZoneInfo("America/New_York")]),
)
@example(first=date(2001, 9, 1), days=62, into=0.0, zone=BERLIN)  # 62 days and the DST hour
def test_the_comparison_period_comes_right_before(
    first: date, days: int, into: float, zone: ZoneInfo
) -> None:
    last = first + timedelta(days=days - 1)
    window = dash_window(
        DashQuery(period="custom", since=first.isoformat(), until=last.isoformat()),
        tz=zone,
        now=datetime(2000, 1, 1, tzinfo=UTC),
    )
    now = window.start + (window.end - window.start) * into
    before = previous_window(window, tz=zone, now=now)
    assert before.start <= before.end <= window.start
    if window.start <= now < window.end:  # as far into the period before as we are into this one
        # by the wall clock: a DST change in each of the two stretches, an hour apart each
        assert before.end - before.start <= now - window.start + timedelta(hours=2)
        if before.end < window.start:
            assert abs(before.end - before.start - (now - window.start)) <= timedelta(hours=2)
    else:
        assert before.end == window.start
        # as many local days, or the calendar month before
        assert before.start.astimezone(zone).date() in {
            first - timedelta(days=days),
            (first.replace(day=1) - timedelta(days=1)).replace(day=1),
        }
    assert chart_unit(window) == ("day" if days <= 62 else "week" if days <= 366 else "month")


@pytest.mark.parametrize(
    ("now", "cut"),
    [
        # New York: October is on EDT, the 20th of November on EST since the 1st
        ("2026-11-20T10:00:00-05:00", "2026-10-20T10:00:00-04:00"),
        # Berlin: CEST from 29 March, in the stretch of March the 30th of April is set against
        ("2026-04-30T09:30:00+02:00", "2026-03-30T09:30:00+02:00"),
        # past the end of the shorter month before: all of it
        ("2026-03-31T12:00:00+02:00", "2026-03-01T00:00:00+01:00"),
    ],
)
def test_the_same_stretch_is_cut_at_the_same_wall_clock_time(now: str, cut: str) -> None:
    zone = ZoneInfo("America/New_York") if now.endswith(("-05:00", "-04:00")) else BERLIN
    at = datetime.fromisoformat(now)
    month = parse_period(at.strftime("%Y-%m"), tz=zone, now=at)
    before = previous_window(month, tz=zone, now=at)
    assert before.end == datetime.fromisoformat(cut)
    assert before.label.endswith(
        f"..{datetime.fromisoformat(cut).astimezone(zone):%Y-%m-%d %H:%M} (same stretch)"
    )


def test_the_first_days_compare_with_days_before_them(db_url: str) -> None:
    query = DashQuery(period="custom", since="1970-01-05", until="1970-02-10")
    d = dashboard_report(Ledger(db_url), query, tz=BERLIN, now=OFFICE_NOW)
    assert d.previous.label == "1969-11-29..1970-01-04"


APIA = ZoneInfo("Pacific/Apia")  # its clocks went from 29 December 2011 to the 31st


@pytest.mark.parametrize(
    "query",
    [DashQuery(period="2011-12-30"), DashQuery(since="2011-12-30", until="2011-12-30")],
)
def test_a_day_the_clocks_skipped_is_no_period(db_url: str, query: DashQuery) -> None:
    """It was a report of nothing, compared with the period "2011-12-31..2011-12-30"."""
    now = datetime(2012, 1, 5, tzinfo=UTC)
    with pytest.raises(ValidationError, match="holds no time in Pacific/Apia: its clocks skip"):
        dashboard_report(Ledger(db_url), query, tz=APIA, now=now)
    around = DashQuery(since="2011-12-29", until="2011-12-31")  # a range over it holds two days
    d = dashboard_report(Ledger(db_url), around, tz=APIA, now=now)
    assert d.window.end - d.window.start == timedelta(days=2)
    assert d.previous.label == "2011-12-26..2011-12-28"


def test_a_calendar_month_compares_with_the_month_before() -> None:
    march = parse_period("2026-03", tz=BERLIN, now=OFFICE_NOW)
    before = previous_window(march, tz=BERLIN, now=OFFICE_NOW)
    assert before.label == "2026-02-01..2026-02-28"
    assert before.end == march.start


@pytest.mark.parametrize(
    "order",
    [
        (["department"], ["model"], ["day"], ["department", "day"], []),
        # each from a rollup already made: (department, day) gives department, day and all
        (["day", "department"], ["department"], ["day"], [], ["model", "department"], ["model"]),
    ],
)
def test_rollup_equals_asking_the_ledger(ledger: Ledger, order: tuple[list[str], ...]) -> None:
    window = parse_period("2026-11", tz=UTC_ZONE, now=OFFICE_NOW)
    fine = spend_report(ledger, window, ["department", "model", "day"], tz=UTC_ZONE)
    for by in order:
        direct = spend_report(ledger, window, by, tz=UTC_ZONE).rows
        assert fine.rollup(by) == direct, by


def test_perf_per_day_buckets_in_the_zone(db_url: str) -> None:
    ledger = Ledger(db_url)
    # 23:30 UTC on the 2nd is already the 3rd in Berlin
    late = datetime(2026, 11, 2, 23, 30, tzinfo=UTC)
    ledger.record(
        [
            make_span(started_at=late, latency_ns=5_000_000),
            make_span(started_at=late - timedelta(hours=2), latency_ns=7_000_000),
        ]
    )
    window = parse_period("2026-11", tz=BERLIN, now=OFFICE_NOW)
    report = perf_report(ledger, window, ["model"], unit="day", tz=BERLIN)
    assert report.columns[:2] == ["model", "day"]
    assert [(r["day"], r["latency_p50_ms"]) for r in report.rows] == [
        ("2026-11-02", Decimal("7.000")),
        ("2026-11-03", Decimal("5.000")),
    ]


def test_failures_report_counts_each_kind(db_url: str) -> None:
    ledger = Ledger(db_url)
    at = datetime(2026, 11, 5, tzinfo=UTC)
    ledger.record(
        [
            make_span(started_at=at, status="error", error_type="timeout"),
            make_span(started_at=at, status="error", error_type="timeout"),
            make_span(started_at=at, status="client_abort", error_type="client_abort"),
            make_span(started_at=at, status="rejected", error_type="budget_exceeded"),
            make_span(started_at=at),
        ]
    )
    window = parse_period("2026-11", tz=UTC_ZONE, now=OFFICE_NOW)
    rows = failures_report(ledger, window)
    assert [(f.status, f.error_type, f.requests) for f in rows] == [
        ("error", "timeout", 2),
        ("client_abort", "client_abort", 1),
        ("rejected", "budget_exceeded", 1),
    ]
    assert failures_report(ledger, window, department="nobody") == []


def _label_reads(monkeypatch: pytest.MonkeyPatch, ledger: Ledger, departments: int) -> int:
    """How often the drill-down of ``departments`` departments (3 calls each) reads a row's label."""
    at = datetime(2026, 11, 2, tzinfo=UTC)
    ledger.record(
        [
            make_span(
                started_at=at + timedelta(minutes=i), department=f"d{i % departments}", user=f"u{i}"
            )
            for i in range(3 * departments)
        ]
    )
    d = dashboard_report(ledger, DashQuery(period="month"), tz=UTC_ZONE, now=OFFICE_NOW)
    reads = 0
    label = SpendRow.label

    def counted(row: SpendRow, column: str) -> str:
        nonlocal reads
        reads += 1
        return label(row, column)

    with monkeypatch.context() as patch:
        patch.setattr(SpendRow, "label", counted)
        drill = d.departments("USD")
    assert len(drill) == departments
    assert sorted(len(x.users.rows) + x.users.others for x in drill) == [3] * departments
    return reads


def test_the_drill_down_reads_each_row_a_few_times_not_once_per_department(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thousand departments took the page seconds: each one's rows were picked out of all of
    them, so the work grew with the square of the departments."""
    few = _label_reads(monkeypatch, Ledger(sqlite_url), 50)
    many = _label_reads(monkeypatch, Ledger(sqlite_url.replace(".db", "-many.db")), 400)
    assert many <= 8 * few * 1.25  # 8 times the departments: 8 times the reads, not 64


_tenants_calls = st.lists(
    st.tuples(
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["research", "sales"]),
        st.sampled_from(["alice", "bob", None]),
        st.sampled_from(["USD", "EUR"]),
        st.integers(min_value=0, max_value=10**12),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=_tenants_calls)
def test_a_department_or_user_is_a_tenants_whatever_the_names(
    sqlite_url: str, calls: list[tuple[str, str, str | None, str, int]]
) -> None:
    """Acme's and globex's ``research`` (and ``alice``) were summed into one on the dashboard:
    in ``/api/dash`` and on the page, every department and user is per tenant, exactly."""
    from ollama_meter.reports import Links, render_dashboard

    with opened(sqlite_url) as ledger:
        day = date(2020, 1, 1) + timedelta(days=next(_example))  # examples share the ledger
        ledger.record(
            [
                make_span(
                    started_at=datetime(day.year, day.month, day.day, 8, tzinfo=UTC),
                    tenant=tenant, department=dept, user=user, currency=currency, cost_total=cost,
                )
                for tenant, dept, user, currency, cost in calls
            ]
        )  # fmt: skip
        d = dashboard_report(ledger, DashQuery(period=day.isoformat()), tz=UTC_ZONE, now=OFFICE_NOW)
        data = d.to_json()
        departments: dict[tuple[str, str, str], int] = defaultdict(int)
        users: dict[tuple[str, str, str], int] = defaultdict(int)
        for tenant, dept, user, currency, cost in calls:
            departments[(currency, tenant, dept)] += cost
            users[(currency, tenant, user or "")] += cost
        expected = {key: format_micros(cost) for key, cost in departments.items()}
        assert sorted(
            ((r["currency"], r["tenant"], r["department"]), r["cost"]) for r in data["departments"]
        ) == sorted(expected.items())
        assert {
            (r["currency"], r["tenant"], r["department"]): r["cost"]
            for r in data["spend_by_department_by_day"]
        } == expected and len(data["spend_by_department_by_day"]) == len(expected)
        assert sorted(
            ((r["currency"], r["tenant"], r["user"]), r["cost"]) for r in data["top_users"]
        ) == sorted((key, format_micros(cost)) for key, cost in users.items())
        several = len({tenant for tenant, *_ in calls}) > 1
        page = render_dashboard(d, links=Links("/dashboard", {}), zone="UTC")
        panels = re.findall(
            r'<details id="(dept-(\w+)-\d+)" class="drill" data-department="(\w+)"'
            r'(?: data-tenant="(\w+)")?>\s*<summary><span class="swatch [\w-]+"></span>'
            r'<span class="name">([^<]*)</span><span class="num" title="([\d.]+) \w+">',
            page,
        )
        assert len({anchor for anchor, *_ in panels}) == len(panels) == len(expected)
        shown = {}
        for _, currency, dept, tenant, label, cost in panels:
            assert (tenant != "") == several
            assert label == (f"{dept} ({tenant})" if several else dept)
            shown[(currency, tenant or calls[0][0], dept)] = cost
        assert shown == expected


@given(limit=st.integers(1, 10**15), spent=st.integers(0, 2 * 10**15))
@example(limit=10**6, spent=0)
def test_a_budgets_share_is_written_as_its_projection_is(limit: int, spent: int) -> None:
    """Nothing spent was '0 %' beside 'projected 0.0 %' (and "0" in /api/dash's percent):
    ``share() or 0`` took the share 0.0 for no share. Both have one decimal, always."""
    budget = Budget("acme", "sales", "month", limit, "USD")
    window = Window(NOVEMBER_START, datetime(2026, 12, 1, tzinfo=UTC), "2026-11")
    status = BudgetStatus(budget, "acme", window, spent=spent, held=0, projected=spent)
    shown = budget_json(status)
    assert (
        re.fullmatch(r"\d+\.\d", shown["percent"])
        and shown["percent"] == shown["projected_percent"]
    )
