"""Sums past 2**63: a report adds rollup cells (or raw spans) that each fit in 64 bits into
a total that does not, exactly, on SQLite as on PostgreSQL."""

from __future__ import annotations

import csv
import io
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, raw_spans
from ollama_meter.periods import parse_period
from ollama_meter.records import MAX_CALL_COST, make_storable
from ollama_meter.reports import (
    CHARGEBACK_COLUMNS,
    chargeback,
    render_chargeback_html,
    render_spend_html,
    spend_report,
    to_csv,
)
from tests.factories import make_span

NOW = datetime(2026, 12, 2, tzinfo=UTC)
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
_GROUPS = st.lists(
    st.tuples(
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["sales", "research", "ops"]),
        st.integers(0, 60 * 24 * 29),  # the minute of November the group's calls begin at
        st.integers(150, 400),  # how many of the costliest calls it makes, a minute apart
    ),
    min_size=3,
    max_size=5,
    unique_by=lambda group: group[:2],  # a cell stops at 2**63 - 1 (a thousand such calls)
)


def _cost(rows: list[dict[str, str]], column: str) -> int:
    return sum(int(Decimal(row[column]).scaleb(6)) for row in rows)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    groups=_GROUPS,
    zone=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]),
    by=st.sampled_from([[], ["tenant"], ["department"], ["model"], ["month"]]),
)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_report_adds_cells_past_64_bits_exactly(
    backend: str,
    pg_server: str | None,
    tmp_path: Path,
    groups: list[tuple[str, str, int, int]],
    zone: str,
    by: list[str],
) -> None:
    """More than a thousand of the costliest calls (an import can hold them) in a few
    departments: each department's cells fit in 64 bits, their total does not. SQLite's
    sum() failed with 'integer overflow' (`report --by tenant`: error, exit 1), where
    PostgreSQL added them; every report, grouped any way, read from the rollups or from
    the raw spans, is now the exact sum of the spans, and so is the bill."""
    if backend == "postgres":
        if pg_server is None:
            pytest.skip("no PostgreSQL server available")
        from tests.conftest import _fresh_pg_database

        url = _fresh_pg_database(pg_server)
    else:
        url = f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"
    # A thousand spans and their rollups in one write: on a loaded machine PostgreSQL took
    # more than the default 5 s to answer it (a CI run at load 8), which is not what this tests.
    ledger = Ledger(url, wait=60)
    spans = [
        make_storable(
            make_span(
                unpriced=False,
                tenant=tenant,
                department=department,
                cost_total=MAX_CALL_COST,
                started_at=NOVEMBER + timedelta(minutes=minute + at),
            )
        )
        for tenant, department, minute, count in groups
        for at in range(count)
    ]
    ledger.record(spans)
    tz = ZoneInfo(zone)
    window = parse_period("2026-11", tz=tz, now=NOW)
    inside = [s for s in spans if window.start <= s.started_at < window.end]
    want = sum(s.cost_total for s in inside)
    for raw in (False, True):
        if raw:
            with raw_spans():
                report = spend_report(ledger, window, by, tz=tz)
        else:
            report = spend_report(ledger, window, by, tz=tz)
        rows = list(csv.DictReader(io.StringIO(to_csv(report.columns, report.rows))))
        assert _cost(rows, "cost") == want
        assert sum(int(row["requests"]) for row in rows) == len(inside)
        render_spend_html(report, tz=tz, zone=zone, generated=NOW, title="past 64 bits")
    bill = chargeback(ledger, "2026-11", tz=tz, now=NOW, currency="USD", fixed_cost=Decimal(10))
    rows = list(csv.DictReader(io.StringIO(to_csv(CHARGEBACK_COLUMNS, bill.rows))))
    assert _cost(rows, "usage_cost") == want
    assert _cost(rows, "total_cost") == want + 10_000_000
    per_department: Counter[tuple[str, str]] = Counter()
    for s in inside:
        per_department[(s.tenant, s.department)] += s.cost_total
    assert {(r["tenant"], r["department"]): _cost([r], "usage_cost") for r in rows} == {
        **dict.fromkeys([("__idle__", "__idle__")] if not inside else [], 0),
        **per_department,
    }
    render_chargeback_html(bill, tz=tz, zone=zone, generated=NOW)
    ledger.dispose()
