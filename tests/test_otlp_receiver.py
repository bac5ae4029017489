"""The OTLP receivers decode exactly what the real OpenTelemetry SDK exporters send.

Later tests trust ``tests._otlp`` to tell what ollama_meter exported, so here it
is checked against the SDK itself, over both OTLP/HTTP and OTLP/gRPC.
"""

from __future__ import annotations

import gzip
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests._otlp import (
    SPAN_KIND_CLIENT,
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    PointView,
    SpanView,
    metric_points,
    spans,
    wait_for,
)

RESOURCE = Resource.create({"service.name": "ometer-test"})
AUTH = {"authorization": "Basic abc"}


@pytest.fixture
def http_rx() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


@pytest.fixture
def grpc_rx() -> Iterator[OtlpGrpcReceiver]:
    with OtlpGrpcReceiver() as rx:
        yield rx


def _emit_spans(exporter: SpanExporter) -> tuple[ReadableSpan, ReadableSpan]:
    """An INTERNAL parent and an errored CLIENT child, exported as each ends."""
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        tracer = provider.get_tracer("ometer.test", "1.2.3")
        with tracer.start_as_current_span("request") as parent:
            with tracer.start_as_current_span("chat llama3", kind=SpanKind.CLIENT) as child:
                child.set_attributes(
                    {
                        "gen_ai.request.model": "llama3",
                        "gen_ai.usage.input_tokens": 12,
                        "ometer.cost": 0.25,
                        "ometer.streamed": True,
                        "gen_ai.response.finish_reasons": ["stop", "length"],
                    }
                )
                child.set_status(Status(StatusCode.ERROR, "upstream 500"))
    finally:
        provider.shutdown()
    return parent, child  # type: ignore[return-value]


def _check_spans(views: list[SpanView], parent: ReadableSpan, child: ReadableSpan) -> None:
    assert [v.name for v in views] == ["chat llama3", "request"]  # children end first
    view = views[0]
    context = child.get_span_context()
    assert context is not None and parent.get_span_context() is not None
    assert view.kind == SPAN_KIND_CLIENT
    assert view.trace_id == f"{context.trace_id:032x}"
    assert view.span_id == f"{context.span_id:016x}"
    assert view.parent_span_id == f"{parent.get_span_context().span_id:016x}"  # type: ignore[union-attr]
    assert (view.start_ns, view.end_ns) == (child.start_time, child.end_time)
    assert view.attributes == {
        "gen_ai.request.model": "llama3",
        "gen_ai.usage.input_tokens": 12,
        "ometer.cost": 0.25,
        "ometer.streamed": True,
        "gen_ai.response.finish_reasons": ("stop", "length"),
    }
    assert (view.status_code, view.status_message) == (2, "upstream 500")
    assert view.resource["service.name"] == "ometer-test"
    assert view.resource["telemetry.sdk.language"] == "python"
    assert view.scope_name == "ometer.test"
    root = views[1]
    assert (root.kind, root.parent_span_id, root.status_code) == (1, "", 0)
    assert root.trace_id == view.trace_id


def _emit_metrics(exporter: MetricExporter) -> None:
    """A counter and an explicit-bucket histogram, pushed by one force_flush."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=100_000)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=RESOURCE,
        views=[
            View(
                instrument_name="ometer.duration",
                aggregation=ExplicitBucketHistogramAggregation(boundaries=(0.1, 1.0, 10.0)),
            )
        ],
    )
    try:
        meter = provider.get_meter("ometer.test")
        calls = meter.create_counter("ometer.calls")
        duration = meter.create_histogram("ometer.duration", unit="s")
        calls.add(2, {"model": "llama3"})
        calls.add(3, {"model": "llama3"})
        calls.add(1, {"model": "qwen"})
        for seconds in (0.05, 0.5, 5.0, 50.0):
            duration.record(seconds, {"model": "llama3"})
        assert provider.force_flush(timeout_millis=5_000)
    finally:
        provider.shutdown()


def _check_points(points: dict[str, list[PointView]]) -> None:
    # shutdown exports once more: the first export is the flush
    calls = sorted(points["ometer.calls"][:2], key=lambda p: p.attributes["model"])
    assert calls == [
        PointView(kind="sum", attributes={"model": "llama3"}, value=5),
        PointView(kind="sum", attributes={"model": "qwen"}, value=1),
    ]
    (duration,) = points["ometer.duration"][:1]
    assert duration.kind == "histogram"
    assert duration.attributes == {"model": "llama3"}
    assert duration.value is None
    assert duration.count == 4
    assert duration.sum == pytest.approx(55.55)
    assert duration.explicit_bounds == (0.1, 1.0, 10.0)
    assert duration.bucket_counts == (1, 1, 1, 1)


# ---------------------------------------------------------------- OTLP/HTTP


def test_http_spans_decoded(http_rx: OtlpHttpReceiver) -> None:
    exporter = HttpSpanExporter(endpoint=f"{http_rx.url}/v1/traces", headers=AUTH, timeout=2)
    parent, child = _emit_spans(exporter)
    _check_spans(spans(http_rx), parent, child)
    request = http_rx.requests[0]
    assert request.path == "/v1/traces"
    assert request.status == 200
    assert request.headers["authorization"] == "Basic abc"
    assert request.headers["content-type"] == "application/x-protobuf"


def test_http_metrics_decoded(http_rx: OtlpHttpReceiver) -> None:
    _emit_metrics(HttpMetricExporter(endpoint=f"{http_rx.url}/v1/metrics", headers=AUTH, timeout=2))
    _check_points(metric_points(http_rx))
    assert {r.path for r in http_rx.requests} == {"/v1/metrics"}
    assert all(r.headers["authorization"] == "Basic abc" for r in http_rx.requests)
    assert spans(http_rx) == []


def test_http_gzip_and_prefixed_path(http_rx: OtlpHttpReceiver) -> None:
    """Langfuse ingests OTLP under /api/public/otel; compressed bodies are inflated."""
    exporter = HttpSpanExporter(
        endpoint=f"{http_rx.url}/api/public/otel/v1/traces",
        compression=Compression.Gzip,
        timeout=2,
    )
    parent, child = _emit_spans(exporter)
    _check_spans(spans(http_rx), parent, child)
    request = http_rx.requests[0]
    assert request.path == "/api/public/otel/v1/traces"
    assert request.headers["content-encoding"] == "gzip"


def test_http_answers_an_empty_export_response(http_rx: OtlpHttpReceiver) -> None:
    body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    request = urllib.request.Request(
        f"{http_rx.url}/v1/traces",
        data=gzip.compress(body),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-protobuf"
        assert trace_service_pb2.ExportTraceServiceResponse.FromString(response.read()) == (
            trace_service_pb2.ExportTraceServiceResponse()
        )
    assert len(http_rx.requests) == 1


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [
        ("/v1/logs", "application/x-protobuf", 404),
        ("/v1/traces", "application/json", 415),
    ],
)
def test_http_rejects_what_it_cannot_decode(
    http_rx: OtlpHttpReceiver, path: str, content_type: str, status: int
) -> None:
    request = urllib.request.Request(
        f"{http_rx.url}{path}", data=b"{}", headers={"Content-Type": content_type}
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=5)
    excinfo.value.close()
    assert excinfo.value.code == status
    assert http_rx.requests == []


def _finished_span() -> ReadableSpan:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        provider.get_tracer("ometer.test").start_span("chat", kind=SpanKind.CLIENT).end()
    finally:
        provider.shutdown()
    (span,) = memory.get_finished_spans()
    return span


def _timed(export: Callable[[], SpanExportResult]) -> tuple[SpanExportResult, float]:
    started = time.monotonic()
    result = export()
    return result, time.monotonic() - started


def test_http_failing_collector() -> None:
    """A 503 is retried with backoff, but the 2 s exporter timeout bounds it to a failure."""
    span = _finished_span()
    with OtlpHttpReceiver(status=503) as rx:
        exporter = HttpSpanExporter(endpoint=f"{rx.url}/v1/traces", timeout=2)
        try:
            result, elapsed = _timed(lambda: exporter.export([span]))
            assert result is SpanExportResult.FAILURE
            assert elapsed < 30  # a hang guard: it gave up (retries stop at the timeout)
            assert rx.requests and {r.status for r in rx.requests} == {503}
            # the collector recovers: the same exporter now gets through
            rx.status = 200
            assert exporter.export([span]) is SpanExportResult.SUCCESS
            assert rx.requests[-1].status == 200
        finally:
            exporter.shutdown()


# ---------------------------------------------------------------- OTLP/gRPC


def test_grpc_spans_decoded(grpc_rx: OtlpGrpcReceiver) -> None:
    exporter = GrpcSpanExporter(endpoint=grpc_rx.endpoint, insecure=True, headers=AUTH, timeout=2)
    parent, child = _emit_spans(exporter)
    _check_spans(spans(grpc_rx), parent, child)
    request = grpc_rx.requests[0]
    assert request.method == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    assert request.metadata["authorization"] == "Basic abc"
    assert request.code is grpc.StatusCode.OK


def test_grpc_metrics_decoded(grpc_rx: OtlpGrpcReceiver) -> None:
    _emit_metrics(
        GrpcMetricExporter(endpoint=grpc_rx.endpoint, insecure=True, headers=AUTH, timeout=2)
    )
    _check_points(metric_points(grpc_rx))
    request = grpc_rx.requests[0]
    assert request.method == "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
    assert request.metadata["authorization"] == "Basic abc"


def test_grpc_failing_collector() -> None:
    span = _finished_span()
    with OtlpGrpcReceiver(code=grpc.StatusCode.PERMISSION_DENIED) as rx:
        exporter = GrpcSpanExporter(endpoint=rx.endpoint, insecure=True, timeout=2)
        try:
            result, elapsed = _timed(lambda: exporter.export([span]))
            assert result is SpanExportResult.FAILURE
            assert elapsed < 30  # a hang guard; not retried: one request
            assert [r.code for r in rx.requests] == [grpc.StatusCode.PERMISSION_DENIED]
        finally:
            exporter.shutdown()


# ---------------------------------------------------------------- wait_for


def test_wait_for_returns_the_truthy_value_and_names_a_timeout() -> None:
    assert wait_for(lambda: [1], timeout=0.1) == [1]
    with pytest.raises(
        AssertionError, match=r"timed out after 0\.05s waiting for a span; last value: \[\]"
    ):
        wait_for(list, timeout=0.05, what="a span")
