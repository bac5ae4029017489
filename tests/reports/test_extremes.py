"""Spans at the bounds a span may hold: every report format still adds them up exactly."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, raw_spans
from ollama_meter.periods import parse_period
from ollama_meter.records import (
    MAX_CALL_COST,
    MAX_DURATION_NS,
    MAX_TOKENS,
    SpanRecord,
    make_storable,
)
from ollama_meter.reports import (
    CHARGEBACK_COLUMNS,
    DashQuery,
    Links,
    chargeback,
    dashboard_report,
    perf_report,
    render_chargeback_html,
    render_dashboard,
    render_spend_html,
    spend_report,
    to_csv,
    to_json,
)
from tests.factories import make_span, opened

NOW = datetime(2026, 12, 2, tzinfo=UTC)
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
FIXED = Decimal(1_000_000_000_000)  # the largest fixed monthly cost
_DURATION = st.sampled_from([None, 0, 1, MAX_DURATION_NS])

_SPANS = st.lists(
    st.fixed_dictionaries(
        {
            "cost_total": st.sampled_from([0, 1, MAX_CALL_COST]) | st.integers(0, MAX_CALL_COST),
            "input_tokens": st.sampled_from([0, MAX_TOKENS]) | st.integers(0, MAX_TOKENS),
            "output_tokens": st.sampled_from([0, 1, MAX_TOKENS]),
            "eval_duration_ns": _DURATION,
            "prompt_eval_duration_ns": _DURATION,
            "latency_ns": _DURATION,
            "department": st.sampled_from(["a", "b" * 64]),
            "user": st.sampled_from([None, "u" * 128]),
            "request_model": st.sampled_from(["m", "x" * 255]),
            "currency": st.sampled_from(["USD", "EUR"]),
            "started_at": st.integers(0, 60 * 24 * 29).map(
                lambda minute: NOVEMBER + timedelta(minutes=minute)
            ),
        }
    ),
    min_size=1,
    max_size=30,  # a rollup cell sums at most 1,000 of the costliest calls exactly
)


def _micros(text: str) -> int:
    return int(Decimal(text).scaleb(6))


def _per_currency(rows: list[dict[str, Any]], column: str) -> Counter[str]:
    sums: Counter[str] = Counter()
    for row in rows:
        sums[row["currency"]] += _micros(row[column])
    return sums


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=_SPANS)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_costliest_longest_calls_add_up_exactly_in_every_format(
    backend: str, pg_server: str | None, tmp_path: Path, fields: list[dict[str, Any]]
) -> None:
    if backend == "postgres":
        if pg_server is None:
            pytest.skip("no PostgreSQL server available")
        from tests.conftest import _fresh_pg_database

        url = _fresh_pg_database(pg_server)
    else:
        url = f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"
    with opened(url) as ledger:
        spans: list[SpanRecord] = [make_storable(make_span(unpriced=False, **f)) for f in fields]
        ledger.record(spans)
        want: Counter[str] = Counter()
        for s in spans:
            want[s.currency] += s.cost_total
        window = parse_period("2026-11", tz=UTC_ZONE, now=NOW)

        report = spend_report(ledger, window, ["department", "user", "model", "day"], tz=UTC_ZONE)
        as_csv = list(csv.DictReader(io.StringIO(to_csv(report.columns, report.rows))))
        as_json = json.loads(to_json(report.columns, report.rows))
        assert _per_currency(as_csv, "cost") == _per_currency(as_json, "cost") == want
        assert sum(int(r["requests"]) for r in as_csv) == len(spans)
        render_spend_html(report, tz=UTC_ZONE, zone="UTC", generated=NOW, title="extremes")
        perf = perf_report(ledger, window, ["department", "model"], tz=UTC_ZONE)
        assert sum(row.requests for row in perf.rows) == len(spans)

        bill = chargeback(ledger, "2026-11", tz=UTC_ZONE, now=NOW, currency="USD", fixed_cost=FIXED)
        rows = list(csv.DictReader(io.StringIO(to_csv(CHARGEBACK_COLUMNS, bill.rows))))
        assert _per_currency(rows, "usage_cost") == want
        assert sum(Decimal(r["fixed_cost_share"]) for r in rows) == FIXED
        assert _per_currency(rows, "total_cost") == want + Counter({"USD": _micros(str(FIXED))})
        render_chargeback_html(bill, tz=UTC_ZONE, zone="UTC", generated=NOW)

        dash = dashboard_report(ledger, DashQuery(period="2026-11"), tz=UTC_ZONE, now=NOW)
        spend = dash.to_json()["spend"]
        assert {s["currency"]: _micros(s["cost"]) for s in spend} == want
        render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")


@pytest.mark.parametrize("status", ["ok", "error", "client_abort"])
@pytest.mark.parametrize("unpriced", [False, True])
def test_the_most_tokens_a_call_holds_read_from_raw_spans_as_from_rollups(
    db_url: str, status: str, unpriced: bool
) -> None:
    """2**31 - 1 tokens in and out (the most a span holds, and what a lying upstream's count
    is cut to): reading raw spans added the two 32-bit columns in SQL to tell unpriced usage,
    which PostgreSQL refused ('integer out of range') for every report with a raw edge."""
    ledger = Ledger(db_url)
    ledger.record(
        [
            make_span(
                status=status, error_type=None if status == "ok" else "timeout",
                unpriced=unpriced, input_tokens=MAX_TOKENS, output_tokens=MAX_TOKENS,
                started_at=NOVEMBER + timedelta(days=4),
            )
        ]
    )  # fmt: skip
    window = parse_period("2026-11", tz=UTC_ZONE, now=NOW)
    cube = spend_report(ledger, window, ["model", "day"], tz=UTC_ZONE)
    perf = perf_report(ledger, window, ["model"], tz=UTC_ZONE)
    with raw_spans():
        assert spend_report(ledger, window, ["model", "day"], tz=UTC_ZONE).rows == cube.rows
        assert perf_report(ledger, window, ["model"], tz=UTC_ZONE).rows == perf.rows
    assert cube.rows[0].input_tokens == cube.rows[0].output_tokens == MAX_TOKENS
    assert cube.unpriced_requests == int(unpriced)
