"""An embedding has input tokens only: the GenAI conventions give its span
``gen_ai.usage.input_tokens`` and no output count, and ``gen_ai.client.token.usage`` a point
of ``gen_ai.token.type=input``. ometer exported ``gen_ai.usage.output_tokens=0`` on every
embedding span and recorded an output point of 0 tokens per call, a series of zeros beside
each model's input (and a 0 in every output-token histogram's lowest bucket)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter.records import make_storable
from ollama_meter.telemetry import _semconv as sc
from ollama_meter.telemetry._observer import TelemetryObserver
from tests.factories import make_span


@settings(max_examples=40, deadline=None)
@given(
    operation=st.sampled_from(sorted(sc.OPERATION_NAMES)),
    tokens=st.integers(0, 10**6),
)
def test_an_embedding_exports_input_tokens_only(operation: str, tokens: int) -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    reader = InMemoryMetricReader()
    observer = TelemetryObserver(
        provider.get_tracer("t"), MeterProvider(metric_readers=[reader]).get_meter("t")
    )
    embedding = sc.OPERATION_NAMES[operation] == "embeddings"
    output = 0 if embedding else 5
    span = make_storable(make_span(operation=operation, input_tokens=tokens, output_tokens=output))
    observer.on_start(span)
    observer.on_end(span)
    (otel,) = exported.get_finished_spans()
    attributes = dict(otel.attributes or {})
    assert attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] == tokens
    assert attributes.get(sc.GEN_AI_USAGE_OUTPUT_TOKENS) == (None if embedding else 5)
    # Langfuse's own type for it (model, usage and cost as a generation's)
    assert attributes[sc.LANGFUSE_OBSERVATION_TYPE] == ("embedding" if embedding else "generation")
    metrics = reader.get_metrics_data()
    assert metrics is not None
    kinds = sorted(
        point.attributes[sc.GEN_AI_TOKEN_TYPE]
        for resource in metrics.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == sc.METRIC_TOKEN_USAGE
        for point in metric.data.data_points
    )
    assert kinds == (["input"] if embedding else ["input", "output"])
