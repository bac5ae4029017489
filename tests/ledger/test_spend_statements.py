"""A spend read's statement is built once per shape: its window, cells and filter values are
bind parameters, and reads of many shapes and windows, interleaved, give what raw spans give."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import event

from ollama_meter.budgets import Budget
from ollama_meter.ledger import Ledger, SpanFilter, _budgets as store
from ollama_meter.ledger._aggregate import aggregate_failures, aggregate_spend
from ollama_meter.meter import SpanRecord
from tests.ledger.test_rollups import (
    BY,
    EXAMPLES,
    FIRST,
    MODELS,
    ZONES,
    _fill,
    ledger_contents,
    spelled,
)

_US = 10**6


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    return Ledger(db_url)


@pytest.fixture
def sent(ledger: Ledger) -> Iterator[list[str]]:
    """The SQL of every rollup sum the ledger's engine sends."""
    found: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "rollups" in statement and "sum(" in statement:
            found.append(statement)

    event.listen(ledger.engine, "before_cursor_execute", seen)
    yield found
    event.remove(ledger.engine, "before_cursor_execute", seen)


def test_a_spend_read_sends_the_same_sql_whatever_its_window_and_values(
    ledger: Ledger, sent: list[str]
) -> None:
    """Windows, cells and filter values went into the SQL as literals: each read was a new
    statement to build, compile and cache (3.7 ms of CPU a budget renewal)."""
    from tests.factories import make_span

    ledger.record(
        [
            make_span(started_at=FIRST + timedelta(days=day, hours=hour), tenant=tenant)
            for day in range(0, 40, 3)
            for hour in (1, 13)
            for tenant in ("acme", "globex")
        ]
    )
    windows = [
        (FIRST, FIRST + timedelta(days=31)),
        (FIRST + timedelta(days=2), FIRST + timedelta(days=9, minutes=45)),
    ]
    budget = Budget(tenant="acme", department=None, period="month", limit=10, currency="USD")
    with ledger.read() as conn:
        for since, until in windows:
            for tenant in ("acme", "globex"):
                aggregate_spend(conn, SpanFilter(since=since, until=until, tenant=tenant), [])
                store.spent(conn, budget, tenant, since, until)
    assert len(sent) == 2 * 2 * 2
    assert len(set(sent)) == 1, sorted(set(sent))


@st.composite
def reads(draw: st.DrawFn) -> tuple[str, SpanFilter, list[str], list[tuple[datetime, datetime]]]:
    """A read: what it asks (spend, failures, a budget's spend), its filters, groups, buckets."""
    since = FIRST + timedelta(minutes=draw(st.integers(-3 * 1440, 40 * 1440)))
    since += timedelta(microseconds=draw(st.sampled_from([0, 0, 0, 1, 37 * _US])))
    until = since + timedelta(minutes=draw(st.integers(1, 45 * 1440)))
    until += timedelta(microseconds=draw(st.sampled_from([0, 0, 0, 1, 599 * _US])))
    picked = {
        "tenant": draw(st.sampled_from([None, None, "acme", "globex"])),
        "department": draw(st.sampled_from([None, None, "sales", "ops"])),
        "user": draw(st.sampled_from([None, None, None, "alice"])),
        "model": draw(st.none() | spelled(MODELS)),
        "status": draw(st.sampled_from([None, None, None, "ok", "error"])),
        "error_type": draw(st.sampled_from([None, None, None, "timeout"])),
    }
    cuts = sorted(draw(st.lists(st.integers(0, 100), max_size=3)))
    span = until - since
    edges = [since + span * cut / 100 for cut in cuts]
    buckets = [(a, b) for a, b in zip([since, *edges], [*edges, until], strict=True) if a < b]
    what = draw(st.sampled_from(["spend", "spend", "bucketed", "failures", "budget"]))
    return what, SpanFilter(since=since, until=until, **picked), draw(BY), buckets


@EXAMPLES
@given(
    content=ledger_contents(),
    cells=st.sampled_from(ZONES),
    asked=st.lists(reads(), min_size=1, max_size=12),
)
def test_reads_of_any_shape_and_window_interleaved_are_the_raw_reads(
    ledger: Ledger,
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    cells: ZoneInfo,
    asked: list[tuple[str, SpanFilter, list[str], list[tuple[datetime, datetime]]]],
) -> None:
    _fill(ledger, content[1], cells)
    with ledger.read() as conn:
        for what, where, by, buckets in asked:
            if what == "failures":
                got: Any = sorted(aggregate_failures(conn, where), key=repr)
                assert got == sorted(aggregate_failures(conn, where, raw=True), key=repr)
            elif what == "budget":
                assert where.since is not None and where.until is not None
                budget = Budget(
                    tenant=where.tenant or "acme",
                    department=where.department,
                    period="month",
                    limit=10,
                    currency="EUR" if where.user else "USD",
                )
                args = (conn, budget, budget.tenant, where.since, where.until)
                got = store.spent(*args)
                assert got == sum(
                    s.cost_total
                    for s in content[0]
                    if s.tenant == budget.tenant
                    and budget.department in (None, s.department)
                    and s.currency == budget.currency
                    and where.since <= s.started_at < where.until
                )
            else:
                cut = buckets if what == "bucketed" else []
                got = sorted(aggregate_spend(conn, where, by, cut), key=repr)
                assert got == sorted(aggregate_spend(conn, where, by, cut, raw=True), key=repr)


def _loops(plan: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """(relation or function, times run) of each scan of a plan (EXPLAIN ANALYZE, JSON)."""
    name = plan.get("Relation Name") or plan.get("Function Name")
    if name:
        yield name, plan["Actual Loops"]
    for inner in plan.get("Plans", ()):
        yield from _loops(inner)


def test_a_read_of_many_cells_reads_each_once_whatever_the_planner_knows(
    db_url: str,
) -> None:
    """On PostgreSQL, rollups no ANALYZE had seen yet (a ledger just imported, autovacuum not
    yet round) were estimated at a row or so for a tenant: the planner scanned them once and
    read the cells' JSON again for each of their rows (4,802 times for 324 cells, 477 ms for
    a 4,500-span ledger, past OMETER_LEDGER_WAIT on a larger one). Now each cell's rows are
    looked up by the rollups' key, and the cells read once, whatever the statistics."""
    from sqlalchemy import text

    from ollama_meter.ledger._ranked import Ranking, aggregate_ranked
    from ollama_meter.ledger._timings import aggregate_histograms
    from tests.factories import make_span

    if not db_url.startswith("postgresql"):
        pytest.skip("the cells' table on SQLite is a virtual table its planner sizes itself")
    ledger = Ledger(db_url)
    with ledger.write() as conn:
        for table in ("rollups", "rollup_histograms"):
            conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
    start = datetime(2000, 1, 3, tzinfo=ZoneInfo("UTC"))
    ledger.record(
        [
            make_span(
                started_at=start + timedelta(days=2 * i, hours=i % 11),
                tenant="ab"[i % 2],
                department=("sales", "ops")[i // 2 % 2],
                cost_total=1000 + i,
                cost_tokens=1000 + i,
                currency="USD",
            )
            for i in range(2000)
        ]
    )
    reads: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if "json_array_elements" in statement:
            reads.append((statement, params))

    where = SpanFilter(
        since=datetime(1999, 12, 31, 23, 59, tzinfo=ZoneInfo("UTC")),
        until=datetime(2026, 12, 7, 7, 44, tzinfo=ZoneInfo("UTC")),
        tenant="a",
    )
    event.listen(ledger.engine, "before_cursor_execute", seen)
    with ledger.read() as conn:
        aggregate_spend(conn, where, ["tenant", "department"])
        aggregate_ranked(conn, where, [Ranking(("tenant", "department"), most=1)])
        aggregate_histograms(conn, where, ["tenant"])
    event.remove(ledger.engine, "before_cursor_execute", seen)
    assert len(reads) == 3
    with ledger.engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        for statement, params in reads:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
            ((plan,),) = cursor.fetchall()
            loops = dict(_loops(plan[0]["Plan"]))
            assert loops["json_array_elements"] == 1, (loops, statement[:200])
    ledger.dispose()
