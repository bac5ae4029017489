"""What ``ometer perf`` prints, held to percentiles worked out by hand from the raw spans.

Any grouping (``--by`` of tenant, department, user, model: ``user`` reads raw spans, the
others the histograms of the rollups), over a month in zones whose midnights are not on the hour or jump (Chatham, Kathmandu, St John's,
Lord Howe), the ledger's own zone another; calls of every status, with and without TTFT,
Ollama's durations or a gateway wait, cold and warm loads, speeds Ollama reported or the meter
measured. The oracle sorts each group's values, takes the nearest-rank percentile and shows
the bin edge README gives for it (the grid written out here again, from the README's words):
nothing is imported from the product's percentile or bin code.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.records import SpanRecord
from tests.factories import make_span
from tests.reports import _oracle as oracle
from tests.reports.test_oracle_prices import SETTINGS

ZONES = ["Pacific/Chatham", "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe", "UTC"]
MONTHS = ["2026-04", "2026-09", "2026-11"]
MS = 10**6

# README: "bins are 1.05, 1.10, …, 2.00, 2.1, …, 5.0, 5.2, …, 10.0 times each power of ten"
_STEPS: list[int] = [*range(105, 201, 5), *range(210, 501, 10), *range(520, 1001, 20)]
"""The grid's multipliers, in hundredths."""


def duration_edge(ns: int) -> int:
    """README: the upper edge of the bin holding ``ns`` (0 its own bin; up to 100 ns, 100)."""
    if ns == 0:
        return 0
    if ns <= 100:
        return 100
    power = 1
    while True:
        for step in _STEPS:
            if step * power >= ns:
                return step * power
        power *= 10


def speed_edge(speed: Fraction) -> int:
    """README: the lower edge of the bin holding a speed, in millionths of a token a second
    (below 0.0001 tok/s it reads 0)."""
    millionths = math.floor(speed * MS)
    if millionths < 100:
        return 0
    lowers = [100, *_STEPS[:-1]]
    power = 1
    while lowers[0] * power * 10 <= millionths:
        power *= 10
    return max(step * power for step in lowers if step * power <= millionths)


def nearest_rank(values: list[Any], p: int) -> Any:
    ordered = sorted(values)
    return ordered[math.ceil(Fraction(p, 100) * len(ordered)) - 1] if ordered else None


def rounded(value: Fraction, places: int) -> Decimal:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def expected_row(spans: list[SpanRecord]) -> dict[str, Decimal | int | None]:
    requests = len(spans)
    errors = sum(s.status in ("error", "interrupted") for s in spans)
    cold = [s.load_duration_ns or 0 for s in spans if (s.load_duration_ns or 0) >= 100 * MS]
    queue = [
        max(0, s.total_duration_ns - (s.load_duration_ns or 0) - (s.prompt_eval_duration_ns or 0)
            - (s.eval_duration_ns or 0))
        for s in spans
        if s.total_duration_ns is not None
    ]  # fmt: skip
    speeds = [
        Fraction(s.output_tokens * 10**9, s.eval_duration_ns)
        for s in spans
        if s.duration_source != "measured" and s.output_tokens > 0 and (s.eval_duration_ns or 0) > 0
    ]
    latency = [s.latency_ns for s in spans if s.latency_ns is not None]
    ttft = [s.ttft_ns for s in spans if s.ttft_ns is not None]
    waited = [s.queue_ns for s in spans if s.queue_ns is not None]

    def ms(values: list[int], p: int) -> Decimal | None:
        true = nearest_rank(values, p)
        return None if true is None else Decimal(duration_edge(true)).scaleb(-6)

    speed = nearest_rank(speeds, 50)
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": rounded(Fraction(errors, requests), 4),
        "latency_p50_ms": ms(latency, 50),
        "latency_p95_ms": ms(latency, 95),
        "latency_p99_ms": ms(latency, 99),
        "ttft_p50_ms": ms(ttft, 50),
        "ttft_p95_ms": ms(ttft, 95),
        "tokens_per_s": None if speed is None else Decimal(speed_edge(speed)).scaleb(-6),
        "cold_loads": len(cold),
        "cold_load_s": rounded(Fraction(sum(cold), 10**9), 3),
        "queue_p50_ms": ms(queue, 50),
        "queue_p95_ms": ms(queue, 95),
        "gateway_queue_p50_ms": ms(waited, 50),
        "gateway_queue_p95_ms": ms(waited, 95),
    }


def read_cell(column: str, text: str) -> Decimal | int | None:
    if text == "":
        return None
    if column in ("requests", "errors", "cold_loads"):
        return int(text)
    places = 1 if column == "tokens_per_s" else 4 if column == "error_rate" else 3
    assert len(text.partition(".")[2]) >= places, (column, text)  # never fewer decimals
    return Decimal(text)


_ns = st.sampled_from([0, 1, 100, 101, 104_999, 105_000, 999_999, 10**9]) | st.integers(0, 10**13)
_maybe = st.none() | _ns


@st.composite
def spans(draw: st.DrawFn, anchors: list[datetime]) -> list[SpanRecord]:
    out = []
    for _ in range(draw(st.integers(1, 24))):
        at = draw(st.sampled_from(anchors)) + timedelta(
            microseconds=draw(st.sampled_from(oracle_offsets))
        )
        load = draw(st.sampled_from([None, 0, 5 * MS, 100 * MS - 1, 100 * MS, 2_500 * MS]))
        out.append(
            make_span(
                started_at=at,
                tenant=draw(st.sampled_from(["acme", "globex"])),
                department=draw(st.sampled_from(["sales", "ops"])),
                user=draw(st.sampled_from([None, "alice", "bob"])),
                request_model=draw(st.sampled_from(["llama3.1:8b", "qwen2.5:7b"])),
                status=draw(st.sampled_from(["ok", "ok", "error", "interrupted", "rejected",
                                             "client_abort"])),
                latency_ns=draw(_maybe),
                ttft_ns=draw(_maybe),
                queue_ns=draw(_maybe),
                total_duration_ns=draw(_maybe),
                load_duration_ns=load,
                prompt_eval_duration_ns=draw(_maybe),
                eval_duration_ns=draw(_maybe),
                output_tokens=draw(st.sampled_from([0, 1, 7, 2**31 - 1])),
                duration_source=draw(st.sampled_from(["reported", "measured"])),
            )
        )  # fmt: skip
    return out


oracle_offsets = [0, -1, 1, -1_800_000_000, 1_800_000_000, 2_700_000_000, -86_400_000_000]


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    month = draw(st.sampled_from(MONTHS))
    zone = ZoneInfo(draw(st.sampled_from(ZONES)))
    ledger_zone = ZoneInfo(draw(st.sampled_from(ZONES)))
    anchors = [*oracle.month_bounds(month, zone), *oracle.month_bounds(month, ledger_zone)]
    anchors += oracle.transitions(zone, month) + oracle.transitions(ledger_zone, month)
    anchors.append(datetime.fromisoformat(month + "-15T12:00").replace(tzinfo=UTC))
    groups = ["tenant", "department", "user", "model"]
    by = draw(st.lists(st.sampled_from(groups), min_size=1, max_size=4, unique=True))
    return {
        "month": month, "zone": zone, "ledger_zone": ledger_zone,
        "spans": draw(spans(anchors)), "by": by,
    }  # fmt: skip


def label(span: SpanRecord, column: str) -> str:
    if column == "model":
        return span.response_model or span.request_model
    return getattr(span, column) or ""


@SETTINGS
@given(case=cases())
def test_perf_shows_the_bin_edge_of_each_groups_true_percentile(
    new_url: Callable[[], str],
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
    case: dict[str, Any],
) -> None:
    month, zone, ledger_zone = case["month"], case["zone"], case["ledger_zone"]
    url = new_url()
    ledger = Ledger(url, zone=ledger_zone.key)
    ledger.record(case["spans"])
    ledger.dispose()
    monkeypatch.setenv("OMETER_TIMEZONE", zone.key)
    columns = case["by"]
    try:
        done = cli(
            "perf", "--db", url, "--period", month, "--by", ",".join(columns), "--format", "csv"
        )
    finally:
        close_ledgers()  # the command's, which each example's would keep open on the server
    assert done.code == 0, done.stderr
    inside = [s for s in case["spans"] if oracle.month_of(s.started_at, zone) == month]
    groups: defaultdict[tuple[str, ...], list[SpanRecord]] = defaultdict(list)
    for s in inside:
        groups[tuple(label(s, c) for c in columns)].append(s)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    got = {
        tuple(r[c] for c in columns): {k: read_cell(k, v) for k, v in r.items() if k not in columns}
        for r in rows
    }
    want = {key: expected_row(found) for key, found in groups.items()}
    assert got == want
