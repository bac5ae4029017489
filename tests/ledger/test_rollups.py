"""Rollups give every report exactly what raw spans give, on generated data, on both backends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from sqlalchemy import delete, update
from sqlalchemy.dialects import sqlite

from ollama_meter.budgets import Budget, budget_status
from ollama_meter.ledger import Ledger, SpanFilter, _budgets as store
from ollama_meter.ledger._aggregate import (
    CUBE_GRAINS,
    aggregate_failures,
    aggregate_spend,
    decompose,
    raw_spans,
)
from ollama_meter.ledger._cells import (
    ANYONE,
    BIN_COLUMNS,
    SLOTS,
    Grain,
    add_intervals,
    busy_interval,
    by_grain,
    duration_bin,
    floor_cell,
    format_intervals,
    histogram_slots,
    merge_intervals,
    next_cell,
    parse_intervals,
    speed_bin,
)
from ollama_meter.ledger._meta import META
from ollama_meter.ledger._plan import GROUP_COLUMNS
from ollama_meter.ledger._rollup import (
    BUSY,
    BUSY_CELLS,
    EACH_MODEL,
    EVERYONE,
    HISTOGRAMS,
    MOST,
    ROLLUPS,
    RollupDelta,
    _with_values,
)
from ollama_meter.ledger._timings import aggregate_histograms, busy_union
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger._upserts import HISTOGRAM_ROW_KEY, Statements, upsert
from ollama_meter.ledger.models import SPANS
from ollama_meter.meter import SpanRecord
from ollama_meter.periods import bucket_bounds, parse_period
from ollama_meter.records import GROUPS, NO_HOST, counted_model
from ollama_meter.reports import (
    chargeback,
    histogram_percentile,
    percentile,
    perf_report,
    spend_report,
)
from tests.factories import make_span

ZONES = [
    ZoneInfo(name)
    for name in ("UTC", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns")
]
NOW = datetime(2026, 12, 3, tzinfo=UTC)
FIRST = datetime(2026, 10, 29, tzinfo=UTC)
MS = 1_000_000

_durations = st.none() | st.integers(0, 3_000 * MS)


@st.composite
def spelled(draw: st.DrawFn, names: Sequence[str]) -> str:
    """One of ``names`` as a caller may spell it and Ollama run it (and echo it back): any
    case, spaces around, the default registry and namespace, no ``:latest``. ``*:latest`` is
    a model called ``*``, the rollups' ANYONE: it must count as a model of its own."""
    name = draw(st.sampled_from(names))
    if name.endswith(":latest") and draw(st.booleans()):
        name = name.removesuffix(":latest")
    prefix = draw(st.sampled_from(["", "", "library/", "registry.ollama.ai/library/"]))
    name = draw(st.sampled_from([str, str, str.upper, str.title]))(prefix + name)
    return draw(st.sampled_from(["", "", " "])) + name + draw(st.sampled_from(["", "", "  "]))


MODELS = ["llama3.1:8b", "qwen2.5:7b", "llama3.1:latest", "*:latest"]


@st.composite
def spans(draw: st.DrawFn) -> SpanRecord:
    started = FIRST + timedelta(microseconds=draw(st.integers(0, 36 * 86_400 * 10**6)))
    status = draw(st.sampled_from(["ok", "ok", "ok", "error", "rejected", "client_abort"]))
    # A call no rule priced costs 0 in every part (an import refuses one that costs more).
    unpriced = draw(st.booleans())
    cost_parts = (
        [0] * 4 if unpriced else draw(st.lists(st.integers(0, 5_000), min_size=4, max_size=4))
    )
    return make_span(
        started_at=started,
        ended_at=draw(
            st.none()
            | st.integers(0, 7_200 * 10**6).map(lambda us: started + timedelta(microseconds=us))
        ),
        tenant=draw(st.sampled_from(["acme", "globex"])),
        department=draw(st.sampled_from(["sales", "support", "ops"])),
        user=draw(st.sampled_from([None, "alice", "bob"])),
        # NO_HOST: a call sent to no server (refused, or gone while queued): no capacity.
        upstream_host=draw(st.sampled_from(["http://gpu1:11434", "http://gpu2:11434", NO_HOST])),
        request_model=draw(spelled(MODELS)),
        # "": an answer naming no model (an import can hold one) is none: the one asked for.
        response_model=draw(
            st.sampled_from([None, ""]) | spelled(["llama3.1:8b", "llama3.1:8b-q4", "*:latest"])
        ),
        status=status,
        # "": an error type that names none (an import can hold one) is none.
        error_type=draw(
            st.sampled_from([None, ""] if status == "ok" else ["timeout", "upstream_5xx", ""])
        ),
        input_tokens=draw(st.integers(0, 500)),
        output_tokens=draw(st.integers(0, 500)),
        total_duration_ns=draw(_durations),
        load_duration_ns=draw(st.none() | st.sampled_from([2 * MS, 99 * MS, 100 * MS, 1_500 * MS])),
        prompt_eval_duration_ns=draw(_durations),
        eval_duration_ns=draw(_durations),
        duration_source=draw(st.sampled_from([None, "reported", "measured"])),
        latency_ns=draw(_durations),
        ttft_ns=draw(_durations),
        cost_tokens=cost_parts[0],
        cost_compute=cost_parts[1],
        cost_energy=cost_parts[2],
        cost_fee=cost_parts[3],
        cost_total=sum(cost_parts),
        currency=draw(st.sampled_from(["USD", "USD", "EUR"])),
        unpriced=unpriced,
    )


@st.composite
def ledger_contents(draw: st.DrawFn) -> tuple[list[SpanRecord], list[list[SpanRecord]]]:
    """Spans, and the batches that record them: any order (late spans), some twice."""
    unique = draw(st.lists(spans(), min_size=1, max_size=40))
    order = draw(st.permutations(unique))
    again = draw(st.lists(st.sampled_from(unique), max_size=8))
    stream = [*order, *again]
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return unique, [b for b in batches if b]


def _wipe(ledger: Ledger) -> None:
    with ledger.write() as conn:
        for table in (SPANS, ROLLUPS, HISTOGRAMS, BUSY, BUSY_CELLS):
            conn.execute(delete(table))
        conn.execute(delete(META).where(META.c.key.in_(["pruned_before", "zone"])))


def _fill(ledger: Ledger, batches: list[list[SpanRecord]], cells: ZoneInfo) -> None:
    """``batches`` recorded in a ledger whose days and months begin at ``cells``'s midnight."""
    _wipe(ledger)
    assert ledger.adopt_zone(cells.key)
    for batch in batches:
        ledger.record([replace(span) for span in batch])


BY = st.lists(st.sampled_from(["tenant", "department", "user", "model"]), unique=True, max_size=3)
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    return Ledger(db_url)


REPORTED = {
    "content": ledger_contents(),
    "zone": st.sampled_from(ZONES),
    "cells": st.sampled_from(ZONES),
    "by": BY,
    "unit": st.sampled_from([None, "day", "week", "month"]),
    "period": st.sampled_from(["2026-11", "2026-10", "2026-11-15", "2026-12"]),
}
"""A ledger's calls, the zone a report cuts days in and the ledger's cells', its groups and window."""
SPELLINGS = st.sampled_from([None, "llama3.1:8b", " LLAMA3.1:8B", "llama3.1", "*", "QWEN2.5:7B"])
"""A model filter: none, or a model as a caller may spell it."""


@EXAMPLES
@given(**REPORTED, tenant=st.sampled_from([None, "acme"]), model=SPELLINGS)
def test_spend_report_from_rollups_is_the_raw_report(
    ledger: Ledger,
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    zone: ZoneInfo,
    cells: ZoneInfo,
    by: list[str],
    unit: str | None,
    period: str,
    tenant: str | None,
    model: str | None,
) -> None:
    _fill(ledger, content[1], cells)
    window = parse_period(period, tz=zone, now=NOW)
    columns = [*by, unit] if unit else by
    report = spend_report(ledger, window, columns, tz=zone, tenant=tenant, model=model)
    with raw_spans():
        expected = spend_report(ledger, window, columns, tz=zone, tenant=tenant, model=model)
    assert report.rows == expected.rows
    assert report.unpriced_requests == expected.unpriced_requests
    assert ledger.count() == len(content[0])
    where = SpanFilter(since=window.start, until=window.end, tenant=tenant, model=model)
    with ledger.read() as conn:
        failures = sorted(aggregate_failures(conn, where), key=repr)
        assert failures == sorted(aggregate_failures(conn, where, raw=True), key=repr)
        # A status or error type asked for is read from the detail rows.
        for asked in ({"status": "error"}, {"error_type": "timeout"}, {"status": "ok"}):
            narrowed = replace(where, **asked)
            by_status = sorted(aggregate_spend(conn, narrowed, by), key=repr)
            assert by_status == sorted(aggregate_spend(conn, narrowed, by, raw=True), key=repr)


@EXAMPLES
@given(
    content=ledger_contents(),
    zone=st.sampled_from(ZONES),
    cells=st.sampled_from(ZONES),
    by=BY,
    period=st.sampled_from(["2026-11", "2026-11-30", "2026-12"]),
    department=st.sampled_from([None, "sales"]),
    unit=st.sampled_from([None, "day", "week"]),
)
def test_perf_report_from_rollups_is_the_raw_report(
    ledger: Ledger,
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    zone: ZoneInfo,
    cells: ZoneInfo,
    by: list[str],
    period: str,
    department: str | None,
    unit: str | None,
) -> None:
    _fill(ledger, content[1], cells)
    window = parse_period(period, tz=zone, now=NOW)
    options = {"department": department, "unit": unit, "tz": zone}
    report = perf_report(ledger, window, by, **options)  # type: ignore[arg-type]
    with raw_spans():
        expected = perf_report(ledger, window, by, **options)  # type: ignore[arg-type]
    assert report.rows == expected.rows
    assert report.warnings == expected.warnings == []


@settings(EXAMPLES, max_examples=50)
@given(
    content=ledger_contents(),
    cells=st.sampled_from(ZONES),
    data=st.data(),
    offsets=st.none() | st.tuples(st.integers(0, 899_999_999), st.integers(0, 899_999_999)),
    by=st.sampled_from([[], ["model"], ["model"], ["tenant"], ["model", "department"]]),
    model=st.sampled_from([None, "llama3.1:8b", "qwen2.5:7b", "Library/QWEN2.5:7b", "*"]),
    tenant=st.sampled_from([None, None, "acme"]),
    buckets=st.lists(st.sampled_from(range(40 * 96)), max_size=3),
)
def test_histograms_of_any_window_from_rollups_are_the_raw_ones(
    ledger: Ledger,
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    cells: ZoneInfo,
    data: st.DataObject,
    offsets: tuple[int, int] | None,
    by: list[str],
    model: str | None,
    tenant: str | None,
    buckets: list[int],
) -> None:
    """Any window, its ends on a quarter hour or not (an open edge: "until now"), grouped
    and filtered any way: per model or for everyone, quarter hours of rows over all
    tenants and departments cover the edges; otherwise days and raw spans do."""
    _fill(ledger, content[1], cells)
    # Ends a few quarter hours to a few weeks either side of a call, so calls fall at the edges.
    anchor = to_us(data.draw(st.sampled_from(content[0])).started_at) // (900 * 10**6)
    around = st.sampled_from([*range(8), *range(8, 40 * 96, 37)])
    first, last = offsets or (0, 0)
    since = from_us((anchor - data.draw(around)) * 900 * 10**6 + first)
    until = from_us((anchor + 1 + data.draw(around)) * 900 * 10**6 + last)
    where = SpanFilter(since=since, until=until, model=model, tenant=tenant)
    starts = sorted({since + timedelta(minutes=15 * b) for b in buckets} | {since})
    cut = list(zip(starts, [*starts[1:], max(until, starts[-1])], strict=True))
    with ledger.read() as conn:
        result = aggregate_histograms(conn, where, by, cut if buckets else ())
        expected = aggregate_histograms(conn, where, by, cut if buckets else (), raw=True)
    assert _counted(result.groups) == _counted(expected.groups)
    assert result.pruned_before is expected.pruned_before is None


def _counted(groups: dict[Any, dict[Any, dict[int, int]]]) -> dict[Any, Any]:
    """``groups`` without the metrics and groups no call was counted in (raw spans keep
    a group whose calls have no timings; a report takes its groups from the sums)."""
    kept = {
        key: {m: bins for m, bins in metrics.items() if bins} for key, metrics in groups.items()
    }
    return {key: metrics for key, metrics in kept.items() if metrics}


@EXAMPLES
@given(
    content=ledger_contents(),
    zone=st.sampled_from(ZONES),
    cells=st.sampled_from(ZONES),
    month=st.sampled_from(["2026-10", "2026-11"]),
    idle=st.sampled_from(["share", "separate"]),
    gpus=st.integers(1, 3),
)
def test_chargeback_from_rollups_is_the_raw_chargeback(
    ledger: Ledger,
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    zone: ZoneInfo,
    cells: ZoneInfo,
    month: str,
    idle: str,
    gpus: int,
) -> None:
    _fill(ledger, content[1], cells)
    options = {"tz": zone, "now": NOW, "currency": "USD", "idle": idle, "gpus": gpus}
    result = chargeback(ledger, month, fixed_cost=Decimal("2400.17"), **options)  # type: ignore[arg-type]
    with raw_spans():
        expected = chargeback(ledger, month, fixed_cost=Decimal("2400.17"), **options)  # type: ignore[arg-type]
    assert (result.rows, result.busy_ns, result.capacity_ns) == (
        expected.rows,
        expected.busy_ns,
        expected.capacity_ns,
    )


@EXAMPLES
@given(
    content=ledger_contents(),
    cells=st.sampled_from(ZONES),
    start=st.integers(0, 40 * 86_400 * 10**6),
    length=st.integers(0, 40 * 86_400 * 10**6),
)
def test_busy_time_of_any_window_from_rollups_is_the_raw_busy_time(
    ledger: Ledger,
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    cells: ZoneInfo,
    start: int,
    length: int,
) -> None:
    """Whole days and months from busy cells, with signs, the rest from minutes, partial
    minutes clipped: the same busy time and hosts as the raw spans give, for any window."""
    _fill(ledger, content[1], cells)
    since = FIRST - timedelta(days=2) + timedelta(microseconds=start)
    until = since + timedelta(microseconds=length)
    with ledger.read() as conn:
        assert busy_union(conn, since, until) == busy_union(conn, since, until, raw=True)


@EXAMPLES
@given(
    content=ledger_contents(),
    cells=st.sampled_from(ZONES),
    start=st.integers(0, 40 * 86_400 * 10**6),
    length=st.integers(0, 40 * 86_400 * 10**6),
)
def test_busy_time_and_hosts_are_those_of_the_calls_sent_to_a_server(
    ledger: Ledger,
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    cells: ZoneInfo,
    start: int,
    length: int,
) -> None:
    """Per host, the union of its calls' busy intervals inside the window; a host counts when
    a call sent to it started in the window or was busy in it. A call sent to no server
    (``NO_HOST``: refused, or gone while queued) is no host's, whatever durations it says."""
    _fill(ledger, content[1], cells)
    since = FIRST - timedelta(days=2) + timedelta(microseconds=start)
    until = since + timedelta(microseconds=length)
    lo, hi = to_us(since), to_us(until)
    per_host: dict[str, list[tuple[int, int]]] = {}
    hosts: set[str] = set()
    for span in content[0]:
        if span.upstream_host == NO_HOST:
            continue
        if lo <= to_us(span.started_at) < hi:
            hosts.add(span.upstream_host)
        interval = busy_interval(span)
        if interval is not None and min(interval[1], hi) > max(interval[0], lo):
            hosts.add(span.upstream_host)
            clipped = (max(interval[0], lo), min(interval[1], hi))
            per_host.setdefault(span.upstream_host, []).append(clipped)
    busy = sum(b - a for found in per_host.values() for a, b in merge_intervals(found))
    with ledger.read() as conn:
        assert busy_union(conn, since, until) == (busy * 1000, len(hosts))


@EXAMPLES
@given(content=ledger_contents(), zone=st.sampled_from(ZONES), cells=st.sampled_from(ZONES))
def test_budget_spend_and_status_from_rollups_are_the_raw_ones(
    ledger: Ledger,
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    zone: ZoneInfo,
    cells: ZoneInfo,
) -> None:
    _fill(ledger, content[1], cells)
    now = datetime(2026, 11, 30, 22, 30, tzinfo=UTC)
    budgets = [
        Budget(tenant="acme", department=None, period="month", limit=10**6, currency="USD"),
        Budget(tenant="*", department="sales", period="day", limit=10**5, currency="EUR"),
        Budget(tenant="globex", department="ops", period="week", limit=10**5, currency="USD"),
    ]
    if not ledger.budgets():
        for budget in budgets:
            ledger.save_budget(budget)
    status = budget_status(ledger, tz=zone, now=now)
    with raw_spans():
        expected = budget_status(ledger, tz=zone, now=now)
    assert status == expected
    with ledger.read() as conn:  # status sums one aggregate per period; the gate asks per budget
        for line in status:
            assert line.spent == store.spent(
                conn, line.budget, line.tenant, line.window.start, line.window.end
            )
    # and the gate's own lookup, over an arbitrary stretch
    start, end = datetime(2026, 10, 31, 23, 15, tzinfo=UTC), datetime(2026, 11, 17, 5, tzinfo=UTC)
    with ledger.read() as conn:
        spent = store.spent(conn, budgets[0], "acme", start, end)
        with raw_spans():
            assert spent == store.spent(conn, budgets[0], "acme", start, end)
    assert spent == sum(
        s.cost_total
        for s in content[0]
        if s.tenant == "acme" and s.currency == "USD" and start <= s.started_at < end
    )


CELL_ZONES = [
    None,
    *ZONES[1:],
    *(ZoneInfo(name) for name in ("America/Santiago", "Australia/Lord_Howe", "Pacific/Chatham")),
    *(ZoneInfo(name) for name in ("Pacific/Apia", "Antarctica/Casey", "Antarctica/Vostok")),
]
"""Ledger zones: UTC, odd offsets, a clock that jumps at midnight, a half-hour DST, +12:45;
a day skipped (Apia, 30 December 2011), days of 27 hours (Casey) and of 31 and 17 (Vostok)."""


@settings(max_examples=300, deadline=None)
@given(
    a=st.integers(-(10**16), 10**16),
    length=st.integers(0, 400 * 86_400 * 10**6),
    probes=st.lists(st.integers(-(10**16), 10**16), max_size=20),
    zone=st.sampled_from(CELL_ZONES),
)
@example(
    a=-10000026000000000, length=0, probes=[], zone=ZoneInfo("Europe/Berlin")
)  # 1653: +0:53:28
def test_pieces_cover_the_window_exactly_once(
    a: int, length: int, probes: list[int], zone: ZoneInfo | None
) -> None:
    b = a + length
    pieces = decompose(a, b, CUBE_GRAINS, zone=zone)
    for piece in pieces:
        if piece.grain is not None:
            assert floor_cell(piece.grain, piece.lo, zone) == piece.lo
            assert floor_cell(piece.grain, piece.hi, zone) == piece.hi
    for t in [a, b - 1, b, *probes, *(p.lo for p in pieces), *(p.hi - 1 for p in pieces)]:
        covered = sum(p.sign for p in pieces if p.lo <= t < p.hi)
        assert covered == (1 if a <= t < b else 0)


@settings(max_examples=200, deadline=None)
@given(
    zone=st.sampled_from(ZONES), day=st.integers(0, 3000), unit=st.sampled_from(["day", "month"])
)
def test_local_midnights_need_no_raw_spans(zone: ZoneInfo, day: int, unit: str) -> None:
    moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=day)
    window = parse_period("month", tz=zone, now=moment)
    for start, _ in bucket_bounds(window, unit, zone):
        pieces = decompose(to_us(start), to_us(start) + 86_400 * 10**6, CUBE_GRAINS)
        assert all(p.grain is not None for p in pieces)
        # and a month costs a handful of cells, not thirty days of quarters
        assert len(pieces) <= 5


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(CELL_ZONES),
    t=st.integers(to_us(datetime(1600, 1, 1, tzinfo=UTC)), to_us(datetime(2200, 1, 1, tzinfo=UTC))),
)
@example(zone=ZoneInfo("Europe/Berlin"), t=-10000026000000000)  # 1653, local mean time +0:53:28
@example(zone=ZoneInfo("Antarctica/Casey"), t=to_us(datetime(2023, 3, 9, 12, tzinfo=UTC)))  # 27 h
@example(zone=ZoneInfo("Antarctica/Vostok"), t=to_us(datetime(1994, 1, 31, 12, tzinfo=UTC)))  # 31 h
@example(zone=ZoneInfo("Antarctica/Vostok"), t=to_us(datetime(1994, 11, 1, 12, tzinfo=UTC)))  # 17 h
@example(zone=ZoneInfo("Pacific/Apia"), t=to_us(datetime(2011, 12, 30, 9, 59, tzinfo=UTC)))
@example(zone=ZoneInfo("Pacific/Apia"), t=to_us(datetime(2011, 12, 30, 10, tzinfo=UTC)))
def test_days_and_months_in_a_zone_are_runs_of_whole_quarter_hours(
    zone: ZoneInfo | None, t: int
) -> None:
    """Every instant is in exactly one day and one month of the ledger's zone; each begins
    at a local midnight (or the jump that replaces it), on a quarter hour, and a month is
    whole days. A day is as long as the zone's clock makes it, from 17 hours to 31."""
    for grain, shortest, longest in ((Grain.DAY, 17, 31), (Grain.MONTH, 27 * 24, 31 * 24 + 7)):
        start = floor_cell(grain, t, zone)
        end = next_cell(grain, start, zone)
        assert start <= t < end
        assert start % (900 * 10**6) == 0 and end % (900 * 10**6) == 0
        assert floor_cell(grain, end, zone) == end and floor_cell(grain, end - 1, zone) == start
        assert shortest * 3600 * 10**6 <= end - start <= longest * 3600 * 10**6
        if grain is Grain.MONTH:
            assert floor_cell(Grain.DAY, start, zone) == start
        if t < to_us(datetime(1970, 1, 1, tzinfo=UTC)):
            continue  # local mean time: a day begins in the quarter hour of its midnight
        local, before = (from_us(us).astimezone(zone or UTC) for us in (start, start - 1))
        # at midnight, or where the clock jumped past it (by an hour, half an hour or seven)
        assert (local.hour, local.minute) == (0, 0) or local.utcoffset() != before.utcoffset()
        assert grain is Grain.DAY or local.day == 1


@settings(max_examples=100, deadline=None)
@given(zone=st.sampled_from(ZONES[1:]), day=st.integers(0, 3000))
def test_a_ledger_in_the_report_zone_reads_one_cell_per_local_day(zone: ZoneInfo, day: int) -> None:
    """Days and months cut at the zone's own midnight: a day or a month in that zone is one
    cell, with no quarter hours added or taken away."""
    moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=day)
    window = parse_period("month", tz=zone, now=moment)
    for start, end in pairwise([s for s, _ in bucket_bounds(window, "day", zone)]):
        pieces = decompose(to_us(start), to_us(end), CUBE_GRAINS, zone=zone)
        assert [p.grain for p in pieces] == [Grain.DAY]
    pieces = decompose(to_us(window.start), to_us(window.end), CUBE_GRAINS, zone=zone)
    assert [p.grain for p in pieces] == [Grain.MONTH]


@settings(max_examples=500, deadline=None)
@given(
    values=st.lists(st.integers(0, 10**13), min_size=1, max_size=50),
    p=st.sampled_from([50, 95, 99]),
)
def test_a_binned_percentile_is_the_bin_edge_of_the_true_one(values: list[int], p: int) -> None:
    bins: dict[int, int] = {}
    for value in values:
        bins[duration_bin(value)] = bins.get(duration_bin(value), 0) + 1
    true = percentile(sorted(values), p)
    assert true is not None
    edge = histogram_percentile(bins, p)
    assert edge == duration_bin(true)
    assert true <= edge <= max(100, true + true // 20)


@settings(max_examples=500, deadline=None)
@given(
    calls=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 10**11)), min_size=1, max_size=30)
)
def test_a_binned_speed_is_the_lower_edge_of_the_true_median(calls: list[tuple[int, int]]) -> None:
    bins: dict[int, int] = {}
    for tokens, ns in calls:
        edge = speed_bin(tokens, ns)
        bins[edge] = bins.get(edge, 0) + 1
    true = percentile(sorted(Fraction(t * 10**15, ns) for t, ns in calls), 50)  # µtoken/s
    assert true is not None
    edge = histogram_percentile(bins, 50)
    assert edge is not None
    assert edge == speed_bin(true.numerator, true.denominator * 10**15)
    assert true * Fraction(95, 100) - 100 <= edge <= true


def test_duration_bins_are_readable_and_narrow() -> None:
    assert [duration_bin(v) for v in (0, 1, 100, 101, 199, 201, 499, 501, 999, 1001)] == [
        0, 100, 100, 105, 200, 210, 500, 520, 1000, 1050,
    ]  # fmt: skip
    assert duration_bin(1_734_000) == 1_750_000  # 1.734 ms → 1.75 ms
    assert speed_bin(20, 10**9) == 20 * 10**6 and speed_bin(2, 300 * MS) == 6_600_000
    assert speed_bin(1, 10**15) == 0


@settings(max_examples=500, deadline=None)
@given(mantissa=st.integers(100, 1000), decade=st.integers(0, 17), nudge=st.integers(-1, 1))
def test_a_bin_is_its_grid_neighbour_at_every_scale(mantissa: int, decade: int, nudge: int) -> None:
    """The grid is 1.05, 1.10 ... 10.0 times each power of ten; near its edges above all."""
    grid = [m * 10**d for d in range(max(decade - 1, 0), decade + 2) for m in (*range(100, 200, 5),
            *range(200, 500, 10), *range(500, 1001, 20))]  # fmt: skip
    value = max(101, mantissa * 10**decade + nudge)
    assert duration_bin(value) == min(edge for edge in grid if edge >= value)
    assert speed_bin(value, 10**15) == max(edge for edge in grid if edge <= value)


def _folded(
    table: dict[tuple[Any, ...], list[int]],
    grains: Sequence[Grain],
    zone: ZoneInfo,
    keys: Callable[[tuple[Any, ...]], list[tuple[Any, ...]]],
) -> dict[tuple[Any, ...], list[int]]:
    """Quarter-hour sums summed into each grain's cells one quarter at a time: the reference."""
    out: dict[tuple[Any, ...], list[int]] = {}
    for (quarter, *rest), values in table.items():
        for grain in grains:
            start = floor_cell(grain, quarter, zone) // 10**6
            for key in keys(tuple(rest)):
                cell = out.setdefault((int(grain), start, *key), [0] * len(values))
                cell[:] = [a + b for a, b in zip(cell, values, strict=True)]
    return out


@settings(max_examples=100, deadline=None)
@given(
    zone=st.sampled_from([*ZONES, ZoneInfo("Africa/Monrovia")]),
    at=st.sampled_from([datetime(1965, 3, 1, tzinfo=UTC), NOW]),  # Monrovia: UTC-0:44:30
    offsets=st.lists(st.integers(-3 * 86_400, 3 * 86_400), min_size=1, max_size=40),
)
def test_days_and_months_of_a_delta_hold_each_quarter_where_its_own_cell_is(
    zone: ZoneInfo, at: datetime, offsets: list[int]
) -> None:
    """Days are summed from quarters and months from days, each placed by a quarter inside it
    (in 1965 Monrovia's days began before local midnight: such a day is in its own month)."""
    delta = RollupDelta()
    for n, seconds in enumerate(offsets):
        delta.add(make_span(started_at=at + timedelta(seconds=seconds), latency_ns=n * MS + 1))
    grains = tuple(Grain)
    assert delta.cube_rows(grains, zone) == _folded(
        delta.quarters, grains, zone, lambda k: [k, (*k[:2], ANYONE, *k[3:5], ANYONE, ANYONE)]
    )


def _histograms_of(
    calls: Sequence[tuple[SpanRecord, int]], grains: Sequence[Grain], zone: ZoneInfo
) -> dict[tuple[Any, ...], list[int]]:
    """Each call's bins added to each of its rows one at a time: the reference."""
    out: dict[tuple[Any, ...], list[int]] = {}
    for span, sign in calls:
        quarter = floor_cell(Grain.QUARTER, to_us(span.started_at))
        model = counted_model(span.response_model or span.request_model)  # "*" is "*:latest"
        for metric, decade, index in histogram_slots(span):
            for grain in grains:
                start = floor_cell(grain, quarter, zone) // 10**6
                names = [EVERYONE, (*EACH_MODEL, model)]
                if grain is not Grain.QUARTER:
                    names.append((span.tenant, span.department, model))
                for named in names:
                    row = out.setdefault((int(grain), start, *named, metric, decade), [0] * SLOTS)
                    row[index] += sign
    return {key: counts for key, counts in out.items() if any(counts)}


@settings(max_examples=100, deadline=None)
@given(
    zone=st.sampled_from([*ZONES, ZoneInfo("Africa/Monrovia")]),
    at=st.sampled_from([datetime(1965, 3, 1, tzinfo=UTC), NOW]),
    calls=st.lists(
        st.tuples(
            st.integers(-3 * 86_400, 3 * 86_400),
            st.sampled_from([("acme", "sales"), ("acme", "ops"), ("globex", "sales")]),
            st.sampled_from(["llama3.1:8b", "qwen2.5:7b", "*"]),
            st.integers(0, 10**12),
            st.none() | st.integers(0, 10**10),
            st.integers(0, 500),
            st.sampled_from([1, 1, -1]),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_the_histogram_rows_of_a_delta_are_its_calls_bins_added_one_by_one(
    zone: ZoneInfo, at: datetime, calls: list[tuple[int, tuple[str, str], str, int, Any, int, int]]
) -> None:
    """Every model's and everyone's rows (quarters, days, months) and each (tenant, department,
    model)'s (days, months), as a batch writes them: the same bins, whichever way they are summed;
    a call taken out again leaves no row."""
    delta = RollupDelta()
    given_calls = []
    for seconds, (tenant, department), model, latency, ttft, tokens, sign in calls:
        span = make_span(
            started_at=at + timedelta(seconds=seconds),
            tenant=tenant,
            department=department,
            request_model=model,
            latency_ns=latency,
            ttft_ns=ttft,
            total_duration_ns=latency // 2,
            output_tokens=tokens,
        )
        given_calls.append((span, sign))
        delta.add(span, sign, busy=sign > 0)
    for grains in (tuple(Grain), (Grain.QUARTER, Grain.DAY)):
        assert delta.histogram_rows(grains, zone) == _histograms_of(given_calls, grains, zone)


def test_each_bins_upsert_is_the_one_compiled_for_it() -> None:
    """The one-bin upserts are the first bin's text with its parameter and column moved: the
    same SQL SQLAlchemy compiles for each bin (compiling all 75 took 0.15 s a process)."""
    dialect = sqlite.dialect(paramstyle="qmark")
    statements = Statements(dialect)
    for index in [*range(SLOTS), 0]:
        counted = BIN_COLUMNS[index]
        others = [name for name in BIN_COLUMNS if name != counted]
        compiled = upsert(dialect, HISTOGRAMS, HISTOGRAM_ROW_KEY, [counted], zeros=others)
        assert statements.one_bin(dialect, index).sql == compiled.sql


def test_cells_follow_the_calendar() -> None:
    nov = to_us(datetime(2026, 11, 1, tzinfo=UTC))
    assert next_cell(Grain.MONTH, nov) == to_us(datetime(2026, 12, 1, tzinfo=UTC))
    assert next_cell(Grain.MONTH, to_us(datetime(2026, 12, 1, tzinfo=UTC))) == to_us(
        datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert floor_cell(Grain.MONTH, nov + 5 * 86_400 * 10**6) == nov
    assert from_us(floor_cell(Grain.QUARTER, nov + 16 * 60 * 10**6)) == datetime(
        2026, 11, 1, 0, 15, tzinfo=UTC
    )


def test_busy_time_of_a_batch_wider_than_one_read_is_the_raw_busy_time(ledger: Ledger) -> None:
    """Busy minutes are read back a few hundred at a time: a batch that spans many reads,
    written twice over (the second batch overlaps every minute of the first) stays exact."""
    start = datetime(2026, 11, 2, tzinfo=UTC)

    def call(minute: int, host: str, shift: int) -> SpanRecord:
        began = start + timedelta(minutes=minute, seconds=shift)
        return make_span(
            started_at=began,
            ended_at=began + timedelta(seconds=90),
            upstream_host=host,
            prompt_eval_duration_ns=30_000 * MS,
            eval_duration_ns=60_000 * MS,
            currency="USD",
        )

    hosts = ["http://gpu1:11434", "http://gpu2:11434"]
    _fill(
        ledger,
        [
            [call(2 * i, hosts[i % 2], 0) for i in range(700)],
            [call(2 * i, hosts[i % 2], 45) for i in range(700)],
        ],
        ZoneInfo("Europe/Berlin"),
    )
    options = {"tz": ZoneInfo("UTC"), "now": NOW, "currency": "USD", "gpus": 2}
    result = chargeback(ledger, "2026-11", fixed_cost=Decimal("100"), **options)  # type: ignore[arg-type]
    with raw_spans():
        expected = chargeback(ledger, "2026-11", fixed_cost=Decimal("100"), **options)  # type: ignore[arg-type]
    assert result.busy_ns == expected.busy_ns == 700 * 135 * 10**9  # 90 s and 90 s, 45 s apart
    assert result.rows == expected.rows


def test_busy_rows_an_import_left_for_no_host_are_no_host_of_capacity(ledger: Ledger) -> None:
    """An imported line could name the host "" before that meant a call sent to no server:
    its busy rows stay until ``ometer db rollup``, and count as no host, as raw spans do."""
    start = datetime(2026, 11, 2, 10, 0, 30, tzinfo=UTC)
    served, refused = (
        make_span(
            started_at=start, ended_at=start + timedelta(seconds=90), upstream_host=host,
            prompt_eval_duration_ns=30_000 * MS, eval_duration_ns=60_000 * MS,
        )
        for host in ("http://gpu1:11434", "http://gpu2:11434")
    )  # fmt: skip
    _fill(ledger, [[served, refused]], ZoneInfo("UTC"))
    with ledger.write() as conn:  # as such an import left them
        conn.execute(update(SPANS).where(SPANS.c.id == refused.id).values(upstream_host=""))
        for table in (BUSY, BUSY_CELLS):
            conn.execute(update(table).where(table.c.host == "http://gpu2:11434").values(host=""))
    with ledger.read() as conn:
        for since, until in ((FIRST, NOW), (start + timedelta(seconds=10), NOW)):
            assert busy_union(conn, since, until) == busy_union(conn, since, until, raw=True)
        assert busy_union(conn, FIRST, NOW) == (90 * 10**9, 1)


def test_aggregates_group_by_exactly_the_groups_reports_offer() -> None:
    """The names reports and the CLI's help list (``records.GROUPS``) are the columns summed by."""
    assert tuple(GROUP_COLUMNS) == GROUPS


_interval = st.tuples(st.integers(0, 60_000_000), st.integers(0, 60_000_000)).map(sorted).map(tuple)


@given(
    stored=st.lists(_interval, max_size=12),
    batches=st.lists(st.lists(_interval, max_size=4), max_size=6),
    in_order=st.booleans(),
)
def test_busy_intervals_added_a_batch_at_a_time_are_their_union(
    stored: list[tuple[int, int]], batches: list[list[tuple[int, int]]], in_order: bool
) -> None:
    """A minute's busy intervals, grown write by write (mostly in time order, as calls end),
    are the union of all of them, and each write's growth is exactly what the union gained."""
    if in_order:  # each batch after the last: the fast path, when calls end in order
        batches = sorted(batches, key=lambda batch: min((a for a, _ in batch), default=0))
    text = format_intervals(merge_intervals(stored))
    seen = list(stored)
    for batch in batches:
        before = sum(b - a for a, b in merge_intervals(seen))
        text, grew = add_intervals(text, batch)
        seen += batch
        union = merge_intervals(seen)
        assert parse_intervals(text) == union
        assert grew == sum(b - a for a, b in union) - before


def _cube_rows_one_by_one(delta: RollupDelta, zone: ZoneInfo) -> dict[tuple[Any, ...], list[int]]:
    """The cube rows the plain way: each grain's cells, each for its user and again summed
    over users, with every sum kept and no row of zeros."""
    rows: dict[tuple[Any, ...], list[int]] = {}
    for grain, cells in by_grain(delta.quarters, tuple(Grain), zone):
        for (start, tenant, department, user, model, currency, *rest), values in cells.items():
            lead = (int(grain), start // 10**6)
            rows[(*lead, tenant, department, user, model, currency, *rest)] = values
            key = (*lead, tenant, department, ANYONE, model, currency, ANYONE, ANYONE)
            current = rows.get(key)
            rows[key] = (
                values if current is None else [a + b for a, b in zip(current, values, strict=True)]
            )
    return {key: values for key, values in rows.items() if any(values)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(spans(), st.sampled_from([1, 1, 1, -1, 0, 2]), st.sampled_from([0, 0, 2**62])),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(["UTC", "Europe/Berlin", "Australia/Lord_Howe"]),
)
def test_a_deltas_cube_rows_are_each_cells_sums_within_64_bits(
    added: list[tuple[SpanRecord, int, int]], zone: str
) -> None:
    """The rows a delta writes are each cell's sums, the overview's too, and every sum that
    passes 64 bits is held at :data:`MOST` (or -MOST), whatever shortcut the write takes."""
    delta = RollupDelta()
    for span, sign, huge in added:
        delta.add(replace(span, input_tokens=span.input_tokens + huge), sign)
    cube = delta.cube_rows(tuple(Grain), ZoneInfo(zone))
    assert cube == _cube_rows_one_by_one(delta, ZoneInfo(zone))
    keys = sorted(cube)
    written = _with_values(keys, cube, fits=delta._fits())
    assert written == [(*key, *(min(max(v, -MOST), MOST) for v in cube[key])) for key in keys]
