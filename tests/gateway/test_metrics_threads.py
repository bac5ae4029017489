"""Every value /metrics shows is exact: whatever the calls' figures, and when calls start and
end on several threads at once.

The gateway's spans are counted on its event loop and on its ledger threads (a call closed
there is counted at once), and a scrape reads them meanwhile: however the threads interleave,
each counter is the sum of its calls, each histogram counts each call once, and the calls in
flight come back to none.
"""

from __future__ import annotations

import sys
import threading

import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ollama_meter.gateway._metrics import GatewayMetrics
from ollama_meter.records import SpanRecord, Status
from ollama_meter.telemetry._semconv import DURATION_BUCKETS, TOKEN_BUCKETS
from tests.factories import make_span

calls = st.lists(
    st.tuples(
        st.sampled_from(["acme", "globex"]),
        st.integers(0, 5_000),
        st.integers(0, 5_000),
        st.integers(0, 10**9),
        st.sampled_from([Status.OK, Status.ERROR]),
    ),
    min_size=1,
    max_size=30,
)


def _span(tenant: str, tokens_in: int, tokens_out: int, latency_ns: int, status: str) -> SpanRecord:
    error = "upstream_5xx" if status == Status.ERROR else None
    return make_span(
        tenant=tenant,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        latency_ns=latency_ns,
        status=status,
        error_type=error,
        cost_total=tokens_in + tokens_out,
    )


def _scraped(metrics: GatewayMetrics) -> dict[str, float]:
    """Each family's samples summed by sample name (labels added up)."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.text()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                sums[sample.name] = sums.get(sample.name, 0) + sample.value
    return sums


@settings(max_examples=25, deadline=None)
@given(calls=calls, threads=st.integers(2, 6))
def test_counts_are_exact_when_threads_count_and_scrape_at_once(
    calls: list[tuple[str, int, int, int, str]], threads: int
) -> None:
    metrics = GatewayMetrics()
    spans = [_span(*call) for call in calls]
    start = threading.Barrier(threads + 1)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def count(worker: int) -> None:
        start.wait()
        for span in spans[worker::threads]:
            metrics.on_start(span)
            metrics.on_end(span)  # no event loop here: counted at once

    try:
        pool = [threading.Thread(target=count, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        start.wait()
        while any(thread.is_alive() for thread in pool):
            _scraped(metrics)  # a scrape reads while they count
        for thread in pool:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    sums = {"ometer_errors_total": 0.0, "gen_ai_client_token_usage_count": 0.0}
    sums["gen_ai_client_token_usage_sum"] = 0.0
    sums |= _scraped(metrics)
    ok = [s for s in spans if s.status == Status.OK]
    assert sums["ometer_requests_total"] == len(spans)
    assert sums["ometer_errors_total"] == len(spans) - len(ok)
    assert sums["ometer_tokens_total"] == sum(s.input_tokens + s.output_tokens for s in spans)
    assert sums["ometer_cost_micros_total"] == sum(s.cost_total for s in spans)
    assert sums["ometer_requests_in_flight"] == 0
    assert sums["gen_ai_client_operation_duration_seconds_count"] == len(spans)
    seconds = sum(s.latency_ns / 1e9 for s in spans if s.latency_ns is not None)
    assert sums["gen_ai_client_operation_duration_seconds_sum"] == pytest.approx(seconds)
    assert sums["gen_ai_client_token_usage_count"] == 2 * len(ok)
    assert sums["gen_ai_client_token_usage_sum"] == sum(
        s.input_tokens + s.output_tokens for s in ok
    )


bounds_ns = st.sampled_from([int(b * 1e9) for b in DURATION_BUCKETS])
tokens = st.sampled_from(TOKEN_BUCKETS).map(int) | st.integers(0, 2**31 - 1)
spans = st.lists(
    st.tuples(
        st.sampled_from([Status.OK, Status.ERROR]),
        tokens,
        tokens,
        bounds_ns | st.integers(0, 10**15),
        st.none() | bounds_ns | st.integers(0, 10**12),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(calls=spans)
def test_each_histogram_bucket_counts_the_calls_at_or_below_it(
    calls: list[tuple[str, int, int, int, int | None]],
) -> None:
    """What a scrape says of any calls, bounds themselves included: each bucket (``le``) counts
    the calls whose figure is not above it, each sum adds them up."""
    metrics = GatewayMetrics()
    made = []
    for status, tokens_in, tokens_out, latency_ns, queue_ns in calls:
        span = _span("acme", tokens_in, tokens_out, latency_ns, status)
        span.queue_ns = queue_ns
        metrics.on_end(span)
        made.append(span)
    figures = {
        "gen_ai_client_operation_duration_seconds": [s.latency_ns / 1e9 for s in made],
        "ometer_queue_duration_seconds": [s.queue_ns / 1e9 for s in made if s.queue_ns is not None],
        "gen_ai_client_token_usage": [
            n for s in made if s.status == Status.OK for n in (s.input_tokens, s.output_tokens)
        ],
    }
    scraped = {f.name: f for f in text_string_to_metric_families(metrics.text())}
    for name, observed in figures.items():
        buckets: dict[float, float] = {}
        total = 0.0
        for sample in scraped[name].samples if observed else ():
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0) + sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
        if not observed:
            assert not [s for s in scraped[name].samples if s.name.endswith("_count")]
            continue
        assert buckets == {le: sum(1 for x in observed if x <= le) for le in buckets}
        assert buckets[float("inf")] == len(observed)
        assert total == pytest.approx(sum(observed))
    counters = _scraped(metrics)
    assert counters["ometer_requests_total"] == len(made)
    assert counters["ometer_tokens_total"] == sum(s.input_tokens + s.output_tokens for s in made)
