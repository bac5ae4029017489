"""A model name only a caller said takes no series of the exported metrics a real model needs.

Model names come from callers: a made-up one per request (refused, or "model not found") was a
label set of every GenAI instrument and of the cost and request counters, up to the SDK's 2,000
each. Past them, every label set new to the process (a model pulled later, its first call) was
lumped into one overflow point for the life of the process, its tokens, time and cost summed
with everything else. ``/metrics`` counted such calls under ``_other`` already.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from ollama_meter.records import make_storable
from ollama_meter.telemetry import _semconv as sc
from ollama_meter.telemetry._observer import TelemetryObserver
from ollama_meter.telemetry._served import OTHER
from tests.factories import make_span


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_made_up_model_names_take_no_series_a_model_answered_later_needs() -> None:
    reader = InMemoryMetricReader()
    observer = TelemetryObserver(
        TracerProvider().get_tracer("t"), MeterProvider(metric_readers=[reader]).get_meter("m")
    )
    for n in range(2100):  # each refused by Ollama: no such model
        made_up = make_storable(
            make_span(
                request_model=f"made-up-{n}",
                response_model=None,
                status="error",
                error_type="model_not_found",
                input_tokens=0,
                output_tokens=0,
                latency_ns=10**7,
            )
        )
        observer.on_start(made_up)
        observer.on_end(made_up)
    pulled = make_storable(
        make_span(request_model="qwen3:4b", response_model="qwen3:4b", latency_ns=10**8)
    )
    observer.on_start(pulled)
    observer.on_end(pulled)
    for name, label in (
        (sc.METRIC_REQUESTS, sc.GEN_AI_REQUEST_MODEL),
        (sc.METRIC_COST, sc.GEN_AI_REQUEST_MODEL),
        (sc.METRIC_OPERATION_DURATION, sc.GEN_AI_REQUEST_MODEL),
    ):
        points = _points(reader, name)
        counted = {point.attributes.get(label): point for point in points}
        assert "qwen3:4b" in counted, name
        assert not any(str(model).startswith("made-up") for model in counted), name
        assert OTHER in counted, name
    requests = _points(reader, sc.METRIC_REQUESTS)
    assert sum(point.value for point in requests) == 2101  # totals stay whole
