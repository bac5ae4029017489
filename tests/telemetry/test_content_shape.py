"""Exported prompts and replies have the shape the GenAI conventions give them, whole JSON.

``gen_ai.input.messages`` and ``gen_ai.output.messages`` are JSON documents (the conventions'
``gen-ai-input-messages.json`` and ``gen-ai-output-messages.json``): an output message needs
``role``, ``parts`` and ``finish_reason``, a text part ``type`` and ``content``. The SDK cuts
any text past ``OTEL_[SPAN_]ATTRIBUTE_VALUE_LENGTH_LIMIT`` where it stands, mid-string.
"""

from __future__ import annotations

import json
import os
from typing import Any
from unittest import mock

from hypothesis import given, settings, strategies as st
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter.records import Status, make_storable, storable_text
from ollama_meter.telemetry import _semconv as sc
from ollama_meter.telemetry._observer import MAX_EXPORTED_TEXT, TelemetryObserver
from tests.factories import make_span


def _exported(limit: int | None, **fields: Any) -> dict[str, Any]:
    """The attributes of the span the observer exports for a call with ``fields``, with
    ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` set to ``limit`` (None: unset)."""
    exported = InMemorySpanExporter()
    variable = "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"
    with mock.patch.dict(os.environ, {} if limit is None else {variable: str(limit)}):
        if limit is None:
            os.environ.pop(variable, None)
        provider = TracerProvider(span_limits=SpanLimits())
        observer = TelemetryObserver(provider.get_tracer("t"), None, capture_content=True)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    span = make_storable(make_span(**fields))
    observer.on_start(span)
    observer.on_end(span)
    (otel,) = exported.get_finished_spans()
    return dict(otel.attributes or {})


def _text_part(message: dict[str, Any]) -> str:
    (part,) = message["parts"]
    assert part["type"] == "text"
    content = part["content"]
    assert isinstance(content, str)
    return content


@settings(max_examples=150, deadline=None)
@given(
    prompt=st.text(max_size=300) | st.just("x" * 200_000),
    reply=st.text(max_size=300) | st.just('"\\' * 20_000),
    reason=st.sampled_from([None, "stop", "length", "load"]),
    status=st.sampled_from(list(Status)),
    limit=st.none() | st.integers(0, 400) | st.just(20_000),
)
def test_exported_messages_are_whole_json_of_the_conventions_shape(
    prompt: str, reply: str, reason: str | None, status: Status, limit: int | None
) -> None:
    """An output message had no ``finish_reason``, which the conventions require, and with a
    length limit set (``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=100``) the SDK cut both messages
    into JSON that did not parse. Now each is whole JSON of the conventions' shape within
    the limit, or, where the limit has no room for any of it, not sent."""
    a = _exported(
        limit,
        prompt=prompt,
        reply=reply,
        done_reason=reason,
        status=status,
    )
    bound = min(MAX_EXPORTED_TEXT, limit if limit is not None else MAX_EXPORTED_TEXT)
    for key, text in ((sc.GEN_AI_INPUT_MESSAGES, prompt), (sc.GEN_AI_OUTPUT_MESSAGES, reply)):
        if key not in a:
            no_reply = key == sc.GEN_AI_OUTPUT_MESSAGES and not reply and status != Status.OK
            assert no_reply or (limit is not None and limit < 120), f"{key} left out ({limit})"
            continue
        assert key == sc.GEN_AI_INPUT_MESSAGES or reply or status == Status.OK  # test_no_reply
        assert len(a[key]) <= bound
        (message,) = json.loads(a[key])
        content = _text_part(message)
        clean = storable_text(text, len(text) + 1)  # what OTLP can carry: no NUL, no lone surrogate
        assert clean == content or (content.endswith("…") and clean.startswith(content[:-1]))
        if key == sc.GEN_AI_OUTPUT_MESSAGES:
            assert message["role"] == "assistant"
            expected = reason or ("stop" if status == Status.OK else "error")
            assert message["finish_reason"] == expected
        else:
            assert message["role"] == "user"


def test_a_limit_above_the_json_keeps_its_content_and_small_values_whole() -> None:
    """A limit of 300 characters keeps a cut prompt (not a left-out one) and the short JSON
    values Langfuse reads (its usage) whole."""
    a = _exported(300, prompt="p" * 5_000, reply="ok")
    (message,) = json.loads(a[sc.GEN_AI_INPUT_MESSAGES])
    assert _text_part(message).endswith("…") and len(a[sc.GEN_AI_INPUT_MESSAGES]) == 300
    assert json.loads(a[sc.LANGFUSE_USAGE])["total"] == 19
    (reply,) = json.loads(a[sc.GEN_AI_OUTPUT_MESSAGES])
    assert _text_part(reply) == "ok" and reply["finish_reason"] == "stop"
