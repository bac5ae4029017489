"""What one export carries is bounded in bytes, not in spans or characters.

A gRPC collector takes 4 MiB a request by default and refuses a larger one whole, every
span in it. Content went 64 spans to an export, sized for prompts in ASCII (about 2 MB):
a prompt and reply in Chinese (3 bytes a character) made 6 MB, in emoji 8 MB, so every
full export was refused and nearly every span lost. A hook's attributes, each up to
16,384 characters, were bounded in number only: ten of them put 80 MB in one export of 512
spans, refused whole, and 8 MB a span in the queue that waits for a collector.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from hypothesis import given, settings, strategies as st
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter import load_settings
from ollama_meter.records import make_storable
from ollama_meter.telemetry import _semconv as sc
from ollama_meter.telemetry._observer import MAX_EXPORTED_TEXT, MAX_HOOKED_BYTES, exportable
from ollama_meter.telemetry._setup import Telemetry
from ollama_meter.telemetry._size import exports, metrics_data, point_bytes, points_of, span_bytes
from ollama_meter.telemetry._watch import MAX_WAITING_BYTES
from tests._otlp import OtlpGrpcReceiver, OtlpHttpReceiver, spans, wait_for
from tests.factories import make_span


def _end(telemetry: Telemetry, calls: int, text: str, hooked: int = 0) -> None:
    """``calls`` spans ended, each with a prompt and a reply of 20,000 ``text``, and ``hooked``
    attributes of as much from a hook."""
    for _ in range(calls):
        span = make_storable(make_span(prompt=text * 20_000, reply=text * 20_000))
        span.attributes = {f"app.doc{n}": text * 20_000 for n in range(hooked)}
        telemetry.observer.on_start(span)
        telemetry.observer.on_end(span)


def _exported(
    monkeypatch: pytest.MonkeyPatch, *, content: bool, made: int, text: str, hooked: int = 0
) -> tuple[OtlpGrpcReceiver, Telemetry]:
    with OtlpGrpcReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true" if content else "false")
        telemetry = Telemetry(load_settings())
        _end(telemetry, made, text, hooked)
        assert telemetry.flush()
        telemetry.shutdown()
    return rx, telemetry


@pytest.mark.parametrize("text", ["é", "漢", "😀"], ids=["latin", "chinese", "emoji"])
def test_content_in_any_script_goes_in_exports_a_grpc_collector_accepts(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    rx, telemetry = _exported(monkeypatch, content=True, made=130, text=text)
    assert {request.code for request in rx.requests} == {grpc.StatusCode.OK}
    assert len(spans(rx)) == 130
    assert telemetry.failures() == []


def test_a_hooks_attributes_are_bounded_in_bytes_and_go_in_exports_a_collector_accepts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "ollama_meter.telemetry"):
        rx, telemetry = _exported(monkeypatch, content=False, made=600, text="漢", hooked=20)
    assert {request.code for request in rx.requests} == {grpc.StatusCode.OK}
    got = spans(rx)
    assert len(got) == 600
    assert telemetry.failures() == []
    for span in got:
        hooked = {k: v for k, v in span.attributes.items() if k.startswith("app.")}
        assert hooked, "the hook's first attributes are exported"
        assert sum(len(k) + len(str(v).encode()) for k, v in hooked.items()) <= MAX_HOOKED_BYTES
        assert span.attributes["ometer.tenant"] == "acme"  # ometer's own, whole
    said = [r.getMessage() for r in caplog.records if "app.doc" in r.getMessage()]
    assert len(said) == 1, said  # once, not a line per span
    assert "not exported" in said[0]


def test_the_spans_waiting_for_a_collector_are_bounded_in_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue for a collector that is away held 2,048 spans whatever their size: with
    content in emoji (4 bytes a character) and a hook's attributes, 600 MB a gateway kept
    in memory until the collector came back. It holds :data:`MAX_WAITING_BYTES` at most; the
    rest are counted as dropped, as for a full queue."""
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "60")  # the collector answers when told
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # exports go by full batches only
    monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
    made = 700
    with OtlpHttpReceiver() as rx:
        rx.answering.clear()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        _end(telemetry, 64, "😀")  # a batch: sent, and held by the collector
        wait_for(lambda: rx.requests, what="the first export")
        _end(telemetry, made - 64, "😀")
        waiting = made - 64 - exporter.dropped
        assert exporter.dropped > 0
        assert waiting * 4 * 2 * 16_384 <= MAX_WAITING_BYTES  # the texts alone, from below
        rx.answering.set()
        assert telemetry.flush()
        telemetry.shutdown()
    assert len(spans(rx)) == made - exporter.dropped


_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
_LEAVES = st.text() | st.binary() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.booleans()


@given(
    st.dictionaries(
        st.text(min_size=1),
        st.recursive(
            _LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner)
        ),
        max_size=8,
    ),
    st.text(),
)
@settings(deadline=None, max_examples=150)
def test_a_spans_size_is_estimated_from_above(attributes: dict[str, Any], name: str) -> None:
    """What exports are cut by never says a span is smaller than it encodes to."""
    _EXPORTER.clear()
    _PROVIDER.get_tracer("t").start_span("bare").end()
    _PROVIDER.get_tracer("t").start_span(
        exportable({"n": name})["n"], attributes=exportable(attributes)
    ).end()
    bare, span = _EXPORTER.get_finished_spans()
    around = encode_spans([bare]).ByteSize()  # the resource and scope, and more
    assert encode_spans([span]).ByteSize() <= span_bytes(span) + around


def test_a_collector_behind_a_body_limit_gets_exports_cut_to_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector behind a proxy that takes 1 MB a request (nginx's default, a Kubernetes
    ingress's) answered 413 to every export of spans with their content (64 of them, 2 MB):
    each was dropped whole, and the log said only that exports failed. An export refused as
    too large is sent again in halves, and the next ones are cut that small from the start;
    the log says so once."""
    monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
    with OtlpHttpReceiver(max_body=2**20) as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        telemetry = Telemetry(load_settings())
        with caplog.at_level(logging.INFO, "ollama_meter.telemetry"):
            _end(telemetry, 300, "p")
            assert telemetry.flush()
        telemetry.shutdown()
    taken = [request.message for request in rx.requests if request.status == 200]
    assert sum(len(s.spans) for m in taken for r in m.resource_spans for s in r.scope_spans) == 300
    assert telemetry.failures() == []
    refused = [request for request in rx.requests if request.status == 413]
    assert 1 <= len(refused) <= 2, len(refused)  # learnt at the first, not paid at every export
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.telemetry"]
    assert len(said) == 1 and "too large (413)" in said[0], said


def test_a_grpc_collector_with_a_small_receive_limit_gets_exports_cut_to_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gRPC collector refuses a request past its ``max_recv_msg_size_mib`` with
    RESOURCE_EXHAUSTED, as an HTTP proxy refuses one past its body limit with 413. 413 had the
    export sent again in halves; RESOURCE_EXHAUSTED had the SDK send the same export again
    and again (it takes the code as retryable, which OTLP says it is only with a RetryInfo)
    until the timeout, and every span in it was dropped. Each span arrives once, whole."""
    monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    made: list[str] = []
    with OtlpGrpcReceiver(max_receive=256 * 1024) as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.endpoint)
        telemetry = Telemetry(load_settings())
        with caplog.at_level(logging.INFO, "ollama_meter.telemetry"):
            for _ in range(150):
                span = make_storable(make_span(prompt="p" * 20_000, reply="r" * 20_000))
                telemetry.observer.on_start(span)
                telemetry.observer.on_end(span)
                made.append(span.span_id)
            assert telemetry.flush()
        telemetry.shutdown()
    got = spans(rx)
    assert sorted(view.span_id for view in got) == sorted(made)  # each once
    head, tail = '[{"role": "user", "parts": [{"type": "text", "content": "', '…"}]}]'
    prompt = head + "p" * (MAX_EXPORTED_TEXT - len(head) - len(tail)) + tail  # whole JSON
    assert {view.attributes["gen_ai.input.messages"] for view in got} == {prompt}
    assert telemetry.failures() == []
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.telemetry"]
    assert len(said) == 1 and "too large (RESOURCE_EXHAUSTED)" in said[0], said


@contextlib.contextmanager
def _metrics_limited_to(
    limit: int, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OtlpHttpReceiver | OtlpGrpcReceiver]:
    """A collector that refuses a request past ``limit`` bytes as too large (413 over HTTP,
    RESOURCE_EXHAUSTED over gRPC, which records none), where metrics go by ``protocol``."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    if protocol == "grpc":
        with OtlpGrpcReceiver(max_receive=limit) as grpc_rx:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", grpc_rx.endpoint)
            yield grpc_rx
        return
    with OtlpHttpReceiver(max_body=limit) as http_rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"{http_rx.url}/v1/metrics")
        yield http_rx


def _taken(rx: OtlpHttpReceiver | OtlpGrpcReceiver) -> list[Any]:
    """The exports ``rx`` took (refused ones are recorded over HTTP, with their status)."""
    return [r.message for r in rx.requests if getattr(r, "status", 200) == 200]


@pytest.mark.parametrize(
    ("protocol", "refusal"), [("http/protobuf", "413"), ("grpc", "RESOURCE_EXHAUSTED")]
)
def test_metrics_to_a_collector_behind_a_body_limit_get_exports_cut_to_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str, refusal: str
) -> None:
    """Spans refused as too large (413) were sent again in halves; metrics were not: an export
    of 1,000 points (a few hundred model names) past a proxy's body limit was refused every
    minute, for the life of the process, and the log said only that exports failed. Both go
    through one mechanism now: the export is cut to what the place takes, said once. So over
    gRPC, where a collector past its receive limit answers RESOURCE_EXHAUSTED (0 points of
    the 300 calls arrived: the SDK sent the export again until its timeout)."""
    calls = 300
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "5")
    with _metrics_limited_to(128 * 1024, protocol, monkeypatch) as rx:
        telemetry = Telemetry(load_settings())
        with caplog.at_level(logging.INFO, "ollama_meter.telemetry"):
            for n in range(calls):
                model = f"{n:05d}" + "m" * 100
                span = make_storable(make_span(request_model=model, response_model=model))
                telemetry.observer.on_start(span)
                telemetry.observer.on_end(span)
            assert telemetry.flush()
            taken = _taken(rx)
        telemetry.shutdown()
    counted = [
        point.as_int
        for message in taken
        for resource in message.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == sc.METRIC_REQUESTS
        for point in metric.sum.data_points
    ]
    assert sorted(counted) == [1] * calls  # one flush: each point once
    assert telemetry.failures() == []
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.telemetry"]
    assert len(said) == 1 and f"too large ({refusal})" in said[0], said


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_metric_points_refused_as_too_large_after_a_batch_got_there_are_not_sent_twice(
    monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """The SDK's metric exporter sends an export in requests of 1,000 points: when the first
    got there and the next was refused as too large, the whole export was sent again in
    halves, and the first 1,000 points arrived twice (a delta's sum counted twice). Exports
    are cut to what one request holds, so a refusal is of all of it or none."""
    reader = InMemoryMetricReader()
    counter = MeterProvider(metric_readers=[reader]).get_meter("m").create_counter("c")
    for n in range(1200):  # 1,000 small points, then 200 of 2 KB: 400 KB in one request
        counter.add(1, {"n": n, "pad": "x" * (2000 if n >= 1000 else 0)})
    data = reader.get_metrics_data()
    assert data is not None
    with _metrics_limited_to(256 * 1024, protocol, monkeypatch) as rx:
        telemetry = Telemetry(load_settings())
        assert telemetry.metric_exporter is not None
        assert telemetry.metric_exporter.export(data).name == "SUCCESS"
        taken = _taken(rx)
        telemetry.shutdown()
    got = [
        next(kv.value.int_value for kv in point.attributes if kv.key == "n")
        for message in taken
        for resource in message.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "c"
        for point in metric.sum.data_points
    ]
    assert sorted(got) == list(range(1200))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["counter", "histogram"]),
            st.dictionaries(st.text(min_size=1), st.text() | st.integers(), max_size=6),
            st.integers(min_value=0, max_value=10**9),
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=1, max_value=12),
)
@settings(deadline=None, max_examples=100)
def test_metric_points_cut_into_parts_are_the_same_points_each_sized_from_above(
    recorded: list[tuple[str, dict[str, Any], int]], cut: int
) -> None:
    """A metrics export cut into parts carries every point once, whole; what the parts are cut
    by never says a point is smaller than it encodes to."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("m")
    counter, histogram = meter.create_counter("c"), meter.create_histogram("h")
    for kind, labels, value in recorded:
        (counter.add if kind == "counter" else histogram.record)(value, labels)
    data = reader.get_metrics_data()
    assert data is not None
    points = points_of(data)
    parts = [metrics_data(points[n : n + cut]) for n in range(0, len(points), cut)]
    whole = encode_metrics(data)
    again = [encode_metrics(part) for part in parts]
    assert sorted(p.SerializeToString() for m in [whole] for p in _points_of(m)) == sorted(
        p.SerializeToString() for m in again for p in _points_of(m)
    )
    for placed in points:
        one = metrics_data([placed])
        (resource,) = one.resource_metrics
        (scope,) = resource.scope_metrics
        (metric,) = scope.metrics
        empty = replace(metric, data=replace(metric.data, data_points=[]))
        around = MetricsData([replace(resource, scope_metrics=[replace(scope, metrics=[empty])])])
        own = encode_metrics(one).ByteSize() - encode_metrics(around).ByteSize()
        assert own <= point_bytes(placed[3])


def _points_of(message: Any) -> list[Any]:
    return [
        point
        for resource in message.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in getattr(metric, metric.WhichOneof("data")).data_points
    ]


@given(
    st.lists(st.integers(min_value=1, max_value=500)),
    st.integers(min_value=1, max_value=1000),
    st.none() | st.integers(min_value=1, max_value=20),
)
def test_exports_carry_each_item_once_in_order_within_their_bytes_and_count(
    sizes: list[int], limit: int, most: int | None
) -> None:
    parts = list(exports(list(range(len(sizes))), sizes, limit, most))
    assert [item for part, _ in parts for item in part] == list(range(len(sizes)))
    for part, its in parts:
        assert its == [sizes[item] for item in part]
        assert sum(its) <= limit or len(part) == 1
        assert most is None or len(part) <= most


def _spans_per_request(rx: OtlpHttpReceiver) -> list[int]:
    return [
        sum(len(s.spans) for r in request.message.resource_spans for s in r.scope_spans)
        for request in rx.requests
    ]


@pytest.mark.parametrize("content", [False, True], ids=["plain", "content"])
def test_the_batch_size_the_sdk_variable_gives_is_the_one_exported_by(
    monkeypatch: pytest.MonkeyPatch, content: bool
) -> None:
    """``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` was read by no one: ometer gave the SDK its own
    512 (64 with content), so a collector that takes small requests got them all the same."""
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3")
    monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true" if content else "false")
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        telemetry = Telemetry(load_settings())
        _end(telemetry, 7, "a")
        assert telemetry.flush()
        telemetry.shutdown()
    sizes = _spans_per_request(rx)
    assert sum(sizes) == 7
    assert max(sizes) <= 3, sizes


def test_a_batch_size_above_the_queue_is_the_queue(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK refuses a batch larger than its queue (the command failed); it is cut to the
    queue, and said once."""
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "9")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    with OtlpHttpReceiver() as rx, caplog.at_level(logging.WARNING, "ollama_meter.telemetry"):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        telemetry = Telemetry(load_settings())
        _end(telemetry, 4, "a")
        assert telemetry.flush()
        telemetry.shutdown()
    sizes = _spans_per_request(rx)
    assert sum(sizes) == 4 and max(sizes) <= 4
    said = [
        r.getMessage() for r in caplog.records if "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in r.getMessage()
    ]
    assert said == [
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=9 is above the queue's 4 spans "
        "(OTEL_BSP_MAX_QUEUE_SIZE): exports carry 4 spans at most"
    ]
