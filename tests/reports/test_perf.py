"""The perf report from known spans: every figure exact, nearest-rank percentiles, worst cells."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import event

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.ledger._cells import duration_bin, speed_bin
from ollama_meter.periods import Window, parse_period
from ollama_meter.reports import (
    COLD_LOAD_NS,
    PERF_METRICS,
    parse_perf_by,
    percentile,
    perf_report,
    to_csv,
    to_json,
)
from tests.factories import make_span

MS = 1_000_000
NOVEMBER = parse_period("2026-11", tz=ZoneInfo("UTC"), now=datetime(2026, 12, 2, tzinfo=UTC))


def llama(**kw: object):  # type: ignore[no-untyped-def]
    return make_span(request_model="llama3.1:8b", department="sales", **kw)


def qwen(**kw: object):  # type: ignore[no-untyped-def]
    return make_span(request_model="qwen2.5:7b", department="support", **kw)


SPANS = [
    # llama3.1:8b / sales: a cold streamed call, a warm one, a non-streamed one, a failure.
    llama(
        latency_ns=123_456_789,  # 123.456789 ms: in the bin (120, 125] ms
        ttft_ns=20 * MS,
        output_tokens=10,
        eval_duration_ns=500 * MS,  # 20 tok/s
        load_duration_ns=1_200 * MS,  # cold
        prompt_eval_duration_ns=50 * MS,
        total_duration_ns=(1_200 + 50 + 500 + 5) * MS,  # 5 ms queued
    ),
    llama(
        latency_ns=200 * MS,
        ttft_ns=30 * MS,
        output_tokens=40,
        eval_duration_ns=1_000 * MS,  # 40 tok/s
        load_duration_ns=2 * MS,
        prompt_eval_duration_ns=10 * MS,
        total_duration_ns=(2 + 10 + 1_000 + 1) * MS,  # 1 ms queued
    ),
    llama(
        stream=False,
        latency_ns=300 * MS,
        ttft_ns=None,
        output_tokens=30,
        eval_duration_ns=1_000 * MS,  # 30 tok/s
        load_duration_ns=COLD_LOAD_NS - 1,  # just warm
        prompt_eval_duration_ns=10 * MS,
        total_duration_ns=1_000 * MS,  # less than its parts: clamped to 0
    ),
    llama(
        status="error",
        latency_ns=50 * MS,
        output_tokens=0,
        eval_duration_ns=None,
        prompt_eval_duration_ns=None,
    ),
    # qwen2.5:7b / support: two cold calls, one without total_duration.
    qwen(
        latency_ns=1_500 * MS,
        ttft_ns=400 * MS,
        output_tokens=7,
        eval_duration_ns=700 * MS,  # 10 tok/s
        load_duration_ns=150 * MS,
        prompt_eval_duration_ns=100 * MS,
        total_duration_ns=1_000 * MS,  # 50 ms queued
    ),
    qwen(
        latency_ns=1_000 * MS,
        ttft_ns=100 * MS,
        output_tokens=2,
        eval_duration_ns=300 * MS,  # 6.666… tok/s
        load_duration_ns=COLD_LOAD_NS,  # exactly the threshold: cold
        prompt_eval_duration_ns=0,
    ),
    # Outside the window, another tenant: neither may leak into the rows above.
    llama(started_at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC), latency_ns=9_999 * MS),
    make_span(tenant="globex", department="research", status="error", eval_duration_ns=None),
]

LLAMA_ROW = {
    "model": "llama3.1:8b",
    "department": "sales",
    "requests": 4,
    "errors": 1,
    "error_rate": Decimal("0.2500"),
    "latency_p50_ms": Decimal("125.000"),  # the edge of its bin: never below, ≤ 5 % above
    "latency_p95_ms": Decimal("300.000"),
    "latency_p99_ms": Decimal("300.000"),
    "ttft_p50_ms": Decimal("20.000"),
    "ttft_p95_ms": Decimal("30.000"),
    "tokens_per_s": Decimal("30.0"),
    "cold_loads": 1,
    "cold_load_s": Decimal("1.200"),
    "queue_p50_ms": Decimal("1.000"),
    "queue_p95_ms": Decimal("5.000"),
    "gateway_queue_p50_ms": None,
    "gateway_queue_p95_ms": None,
}
QWEN_ROW = {
    "model": "qwen2.5:7b",
    "department": "support",
    "requests": 2,
    "errors": 0,
    "error_rate": Decimal("0.0000"),
    "latency_p50_ms": Decimal("1000.000"),
    "latency_p95_ms": Decimal("1500.000"),
    "latency_p99_ms": Decimal("1500.000"),
    "ttft_p50_ms": Decimal("100.000"),
    "ttft_p95_ms": Decimal("400.000"),
    "tokens_per_s": Decimal("6.6"),  # 6.666… lies in the bin [6.6, 6.7): never above
    "cold_loads": 2,
    "cold_load_s": Decimal("0.250"),
    "queue_p50_ms": Decimal("50.000"),
    "queue_p95_ms": Decimal("50.000"),
    "gateway_queue_p50_ms": None,
    "gateway_queue_p95_ms": None,
}


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    ledger = Ledger(db_url)
    ledger.record(SPANS)
    return ledger


def test_rows_are_exact_for_each_group(ledger: Ledger) -> None:
    result = perf_report(ledger, NOVEMBER, ["model", "department"], tenant="acme")
    assert result.columns == ["model", "department", *PERF_METRICS]
    assert result.rows == [LLAMA_ROW, QWEN_ROW]
    # Equal Decimals can differ in exponent; the places are part of the contract.
    assert [str(result.rows[0][c]) for c in ("error_rate", "latency_p95_ms", "tokens_per_s")] == [
        "0.2500",
        "300.000",
        "30.0",
    ]


def test_csv_and_json_are_decimal_strings_and_empty_for_none(ledger: Ledger) -> None:
    result = perf_report(ledger, NOVEMBER, ["tenant"])
    text = to_csv(result.columns, result.rows)
    assert text.splitlines() == [
        "tenant," + ",".join(PERF_METRICS),
        "acme,6,1,0.1667,200.000,1500.000,1500.000,30.000,400.000,20.0,3,1.450,1.000,50.000,,",
        "globex,1,1,1.0000,,,,,,,0,0.000,,,,",
    ]
    data = json.loads(to_json(result.columns, result.rows))
    assert data[1] == {
        "tenant": "globex",
        "requests": 1,
        "errors": 1,
        "error_rate": "1.0000",
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "latency_p99_ms": None,
        "ttft_p50_ms": None,
        "ttft_p95_ms": None,
        "tokens_per_s": None,
        "cold_loads": 0,
        "cold_load_s": "0.000",
        "queue_p50_ms": None,
        "queue_p95_ms": None,
        "gateway_queue_p50_ms": None,
        "gateway_queue_p95_ms": None,
    }


def test_filters_and_user_grouping(ledger: Ledger) -> None:
    only = perf_report(ledger, NOVEMBER, ["model"], model="qwen2.5:7b")
    assert [(r["model"], r["requests"]) for r in only.rows] == [("qwen2.5:7b", 2)]
    sales = perf_report(ledger, NOVEMBER, ["user"], department="sales")
    assert [(r["user"], r["requests"]) for r in sales.rows] == [("", 4)]
    assert perf_report(ledger, NOVEMBER, [], tenant="acme").rows[0]["requests"] == 6
    december = parse_period("2026-12", tz=ZoneInfo("UTC"), now=datetime(2026, 12, 2, tzinfo=UTC))
    assert perf_report(ledger, december, ["model"]).rows == []


def test_worst_cells_need_two_rows_that_differ(ledger: Ledger) -> None:
    result = perf_report(ledger, NOVEMBER, ["model", "department"], tenant="acme")
    assert result.worst() == {
        "latency_p95_ms": {1},
        "tokens_per_s": {1},
        "error_rate": {0},
        "cold_load_s": {0},
    }
    assert perf_report(ledger, NOVEMBER, ["model"], model="qwen2.5:7b").worst() == {}


def test_parse_perf_by() -> None:
    assert parse_perf_by(" Model, department ") == ["model", "department"]
    with pytest.raises(ValidationError, match="--by day is not one of: tenant, department"):
        parse_perf_by("model,day")
    with pytest.raises(ValidationError, match="twice"):
        parse_perf_by("model,model")


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        # The textbook example of the nearest-rank method.
        ([15, 20, 35, 40, 50], 5, 15),
        ([15, 20, 35, 40, 50], 30, 20),
        ([15, 20, 35, 40, 50], 40, 20),
        ([15, 20, 35, 40, 50], 50, 35),
        ([15, 20, 35, 40, 50], 100, 50),
        ([1, 2, 3, 4], 50, 2),  # the lower middle of an even count
        ([1, 2, 3, 4], 95, 4),
        ([1, 2, 3, 4], 25, 1),
        ([1, 2, 3, 4], 26, 2),
        (list(range(1, 21)), 95, 19),  # exactly rank 19: no float error
        (list(range(1, 21)), 99, 20),
        (list(range(1, 101)), 99, 99),
        (list(range(1, 101)), 50, 50),
        ([7], 0.001, 7),
        ([7], 100, 7),
        ([3, 9], Decimal("50"), 3),
        ([3, 9], Decimal("50.0001"), 9),
    ],
)
def test_percentile_nearest_rank(values: list[int], p: float, expected: int) -> None:
    assert percentile(values, p) == expected


def test_percentile_edges() -> None:
    assert percentile([], 50) is None
    for bad in (0, -1, 100.5, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 100\]"):
            percentile([1], bad)


@given(
    values=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1),
    p=st.floats(min_value=0, max_value=100, exclude_min=True),
    q=st.floats(min_value=0, max_value=100, exclude_min=True),
)
def test_percentile_is_a_value_and_monotone(values: list[int], p: float, q: float) -> None:
    ordered = sorted(values)
    low, high = sorted((p, q))
    at_low, at_high = percentile(ordered, low), percentile(ordered, high)
    assert at_low in values and at_high in values
    assert at_low is not None and at_high is not None and at_low <= at_high
    assert percentile(ordered, 100) == ordered[-1]


def test_measured_durations_stay_out_of_tokens_per_second(ledger: Ledger) -> None:
    """A /v1 call's timing is the gateway's clock (network and queue included), not Ollama's speed."""
    measured = [
        make_span(
            request_model="gemma:2b",
            latency_ns=100 * MS,
            output_tokens=10,
            prompt_eval_duration_ns=0,
            eval_duration_ns=100 * MS,  # 100 tok/s, were it Ollama's figure
            duration_source="measured",
        )
        for _ in range(3)
    ]
    ledger.record(
        [
            *measured,
            make_span(
                request_model="gemma:2b",
                latency_ns=600 * MS,
                output_tokens=10,
                prompt_eval_duration_ns=10 * MS,
                eval_duration_ns=500 * MS,  # 20 tok/s
                duration_source="reported",
            ),
        ]
    )
    (row,) = perf_report(ledger, NOVEMBER, ["model"], model="gemma:2b").rows
    assert (row["requests"], row["tokens_per_s"]) == (4, Decimal("20.0"))


# Durations at and around the grid's corners: 0, 1 ns, the 100 ns floor, bin edges and a hair
# past them, sub-millisecond waits, hours, and the largest a span stores (MAX_DURATION_NS).
_ns = st.sampled_from(
    [0, 1, 99, 100, 101, 1_020, 1_050, 1_051, 2_130, 3_130, 104_999, 999_999, 1_150_001]
) | st.integers(0, 10**15)
_speeds = st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 10**15)) | st.sampled_from(
    [(116, 100 * 10**9), (23, 20 * 10**9), (1, 10**9), (2, 300 * MS)]  # 1.16, 1.15, 1, 6.67 tok/s
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(_ns, _ns, _speeds), min_size=1, max_size=12))
def test_every_figure_is_its_bin_edge_exactly(
    calls: list[tuple[int, int, tuple[int, int]]],
) -> None:
    """README's contract, as the user reads it in CSV and JSON: a latency, TTFT or queue
    percentile is the upper edge of the bin holding the true nearest-rank value (never below
    it), tokens/s the lower edge of its bin (never above it); whatever the magnitude."""
    spans = [
        make_span(
            latency_ns=latency,
            ttft_ns=latency,
            queue_ns=wait,
            total_duration_ns=wait + eval_ns,
            load_duration_ns=0,
            prompt_eval_duration_ns=0,
            eval_duration_ns=eval_ns,
            output_tokens=tokens,
        )
        for latency, wait, (tokens, eval_ns) in calls
    ]
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(f"sqlite:///{folder}/ledger.db")
        ledger.record(spans)
        (row,) = perf_report(ledger, NOVEMBER, ["model"]).rows
        with raw_spans():
            assert perf_report(ledger, NOVEMBER, ["model"]).rows == [row]
        ledger.dispose()
    latencies = sorted(latency for latency, _, _ in calls)
    waits = sorted(wait for _, wait, _ in calls)
    for column, values, p in (
        ("latency_p50_ms", latencies, 50),
        ("latency_p99_ms", latencies, 99),
        ("ttft_p95_ms", latencies, 95),
        ("queue_p95_ms", waits, 95),
        ("gateway_queue_p50_ms", waits, 50),
    ):
        true = percentile(values, p)
        assert true is not None
        shown = row[column]
        assert shown == Decimal(duration_bin(true)).scaleb(-6), column
        assert isinstance(shown, Decimal) and shown * 10**6 >= true, column
    speeds = sorted(Fraction(tokens, eval_ns) * 10**9 for _, _, (tokens, eval_ns) in calls)
    median = percentile(speeds, 50)
    assert median is not None
    edge = speed_bin(median.numerator, median.denominator * 10**9)
    assert row["tokens_per_s"] == Decimal(edge).scaleb(-6)
    assert row["tokens_per_s"] <= median


def test_a_call_recorded_while_perf_reads_is_counted_whole_or_not_at_all(db_url: str) -> None:
    """A window from 00:30 reads its first day's cell less the half hour before 00:30 from
    raw spans: two statements. A late call in that half hour (an import, a journal
    recovered) committed between them was subtracted without having been added: its
    latency bin went to -1 and the group's percentiles read none at all (PostgreSQL,
    READ COMMITTED). One report reads one moment of the ledger."""
    ledger, writer = Ledger(db_url), Ledger(db_url)  # another process, as it were
    ledger.record([llama(started_at=datetime(2026, 11, 15, tzinfo=UTC), latency_ns=200 * MS)])
    late = llama(started_at=datetime(2026, 11, 10, 0, 10, tzinfo=UTC), latency_ns=5 * MS)
    window = Window(datetime(2026, 11, 10, 0, 30, tzinfo=UTC), NOVEMBER.end, "from 00:30")

    def record_once(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if "rollup_histograms" in statement and writer.count() == 1:
            writer.record([late])

    event.listen(ledger.engine, "after_cursor_execute", record_once)
    try:
        (row,) = perf_report(ledger, window, ["model", "department"]).rows
    finally:
        event.remove(ledger.engine, "after_cursor_execute", record_once)
    assert ledger.count() == 2  # the late call was recorded meanwhile
    assert (row["requests"], row["latency_p50_ms"]) == (1, Decimal("200.000"))


def test_errors_are_failures_and_crashes_not_refusals_or_hang_ups(db_url: str) -> None:
    """As the README says: `error` and `interrupted` are errors; `rejected` and `client_abort`
    count as calls, not errors; a refusal's 0 ns is in the latency percentiles."""
    ledger = Ledger(db_url)
    ledger.record(
        [
            qwen(status="ok", latency_ns=400 * MS),
            qwen(status="error", error_type="timeout", latency_ns=300 * MS),
            qwen(status="interrupted", error_type="interrupted", latency_ns=None),
            qwen(status="rejected", error_type="budget_exceeded", latency_ns=0),
            qwen(status="client_abort", error_type="client_abort", latency_ns=200 * MS),
        ]
    )
    (row,) = perf_report(ledger, NOVEMBER, ["model"]).rows
    assert (row["requests"], row["errors"], row["error_rate"]) == (5, 2, Decimal("0.4000"))
    assert (row["latency_p50_ms"], row["latency_p95_ms"]) == (
        Decimal("200.000"),
        Decimal("400.000"),
    )
