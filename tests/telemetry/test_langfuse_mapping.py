"""The attributes Langfuse maps from an OTLP span hold what it takes, or it drops them."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter.records import MAX_TAG_KEY, MAX_TAG_VALUE, make_storable
from ollama_meter.telemetry import _semconv as sc
from ollama_meter.telemetry._observer import LANGFUSE_MAX_TAG, TelemetryObserver
from tests.factories import make_span

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1)


@settings(max_examples=100, deadline=None)
@given(
    tags=st.dictionaries(
        _TEXT.map(lambda t: t[:MAX_TAG_KEY]), _TEXT.map(lambda t: t[:MAX_TAG_VALUE]), max_size=4
    )
    | st.just({"k" * MAX_TAG_KEY: "v" * MAX_TAG_VALUE})
)
def test_every_tag_reaches_langfuse_within_its_200_characters(tags: dict[str, str]) -> None:
    """Langfuse drops a tag past 200 characters, without a word; a span's tag may be a
    64-character key and a 256-character value, so its ``key:value`` is cut to 200 instead."""
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    observer = TelemetryObserver(provider.get_tracer("t"), None)
    span = make_storable(make_span(tenant="acme", department="sales", tags=tags))
    observer.on_start(span)
    observer.on_end(span)
    (otel,) = exported.get_finished_spans()
    assert otel.attributes is not None
    sent = list(otel.attributes[sc.LANGFUSE_TAGS])  # type: ignore[arg-type]
    whole = ["tenant:acme", "department:sales", *(f"{k}:{v}" for k, v in sorted(span.tags.items()))]
    assert sent == [
        tag if len(tag) <= LANGFUSE_MAX_TAG else tag[: LANGFUSE_MAX_TAG - 1] + "…" for tag in whole
    ]
    assert all(len(tag) <= LANGFUSE_MAX_TAG for tag in sent)
