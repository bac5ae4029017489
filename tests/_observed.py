"""One call's span as the telemetry observer exports it, in memory."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter.records import SpanRecord, make_storable
from ollama_meter.telemetry._observer import TelemetryObserver


def observed(
    span: SpanRecord,
    *,
    capture_content: bool = False,
    max_length: int | None = None,
    elsewhere: bool = False,
) -> ReadableSpan:
    """The OTel span exported for ``span`` (made storable, as the meter does first), ended
    as the call's own record or, ``elsewhere``, as one a gateway recorded."""
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    observer = TelemetryObserver(provider.get_tracer("t"), None, capture_content=capture_content)
    if max_length is not None:
        observer.max_length = max_length
    span = make_storable(span)
    observer.on_start(span)
    if elsewhere:
        observer.on_recorded_elsewhere(span)
    else:
        observer.on_end(span)
    (otel,) = exported.get_finished_spans()
    return otel
