"""The gateway's span of a call carries the settings its request set, on each route.

What a real caller of each wire format sends (OpenAI's Chat Completions and Completions,
Anthropic's Messages, the Responses API), through the in-process gateway to an in-memory
exporter: the conventions' ``gen_ai.request.*`` of what it set (what it sets badly, the
gateway refuses: ``test_request_settings`` shows the reader's bounds).
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter.telemetry._observer import TelemetryObserver
from tests.gateway.conftest import Gateway

R = "gen_ai.request."
HI = [{"role": "user", "content": "hi"}]
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "/v1/chat/completions",
        {"messages": HI, "max_completion_tokens": 32, "temperature": 0.5, "top_p": 1,
         "seed": -3, "stop": "END", "n": 1, "frequency_penalty": 0.25},
        {"max_tokens": 32, "temperature": 0.5, "top_p": 1.0, "seed": -3,
         "stop_sequences": ("END",), "choice.count": 1, "frequency_penalty": 0.25},
    ),
    (
        "/v1/completions",
        {"prompt": "hi", "max_tokens": 16, "stop": ["a", "b"]},
        {"max_tokens": 16, "stop_sequences": ("a", "b")},
    ),
    (
        "/v1/messages",
        {"messages": HI, "max_tokens": 20, "temperature": 0.1, "top_k": 5,
         "stop_sequences": ["\n\nHuman:"]},
        {"max_tokens": 20, "temperature": 0.1, "top_k": 5.0, "stop_sequences": ("\n\nHuman:",)},
    ),
    (
        "/v1/responses",
        {"input": "hi", "max_output_tokens": 12, "temperature": 0.3, "top_p": 0.8},
        {"max_tokens": 12, "temperature": 0.3, "top_p": 0.8},
    ),
    ("/v1/embeddings", {"input": "hi"}, {}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "sent", "want"), CASES)
def test_each_route_exports_the_settings_its_request_set(
    sqlite_app: Gateway, path: str, sent: dict[str, Any], want: dict[str, Any]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sqlite_app.meter.observers.append(TelemetryObserver(provider.get_tracer("t"), None))
    reply = sqlite_app.client.post(path, json={"model": "llama3.1:8b", **sent})
    assert reply.status_code == 200, reply.text
    sqlite_app.settle()
    (otel,) = exporter.get_finished_spans()
    got = {k: v for k, v in (otel.attributes or {}).items() if k.startswith(R)}
    assert got == {R + "model": "llama3.1:8b", **{R + k: v for k, v in want.items()}}
