"""Ollama's OpenAI-compatible chat and text completions through the gateway: the client gets
Ollama's bytes, the span Ollama's counts.

The gateway asks Ollama for the usage a stream's client did not ask for (the span then has
exact counts); whatever Ollama adds for that request is taken out again, so the client gets
the bytes Ollama sends it when it does not ask. Thinking (``reasoning``) and tool calls
stream through as Ollama writes them, and count in the reply's tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import DEFAULT_MODELS, THINKING_MODEL, OllamaEmulator, expected_reply
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "what is the weather in Paris today"}]
WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "format": {"type": "string"}},
            },
        },
    }
]


@pytest.fixture
def thinker() -> Iterator[OllamaEmulator]:
    with OllamaEmulator(models=[*DEFAULT_MODELS, THINKING_MODEL]) as emu:
        emu.latency = emu.token_latency = 0.0
        yield emu


@pytest.fixture
def gw(serve_on: Callable[..., Gateway], thinker: OllamaEmulator, sqlite_url: str) -> Gateway:
    gateway = serve_on(thinker.url, sqlite_url)
    gateway.ledger.add_price_rule(token_prices())
    return gateway


def _same_ids(text: str) -> str:
    """An answer with its per-call parts (completion and tool-call ids, times) made alike."""
    text = re.sub(r'"(chatcmpl|cmpl)-\d+"', r'"\1-N"', text)
    text = re.sub(r'"call_[0-9a-f]{8}"', '"call_N"', text)
    return re.sub(r'"created":\d+', '"created":0', text)


BODIES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": "llama3.1:8b", "messages": HI}),
    ("/v1/chat/completions", {"model": "qwen3:8b", "messages": HI}),
    ("/v1/chat/completions", {"model": "qwen3:8b", "messages": HI, "tools": WEATHER}),
    ("/v1/completions", {"model": "qwen2.5:7b", "prompt": "why is the sky blue"}),
]


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}, {"include_usage": True}])
@pytest.mark.parametrize(("path", "body"), BODIES)
def test_a_stream_reaches_the_client_as_ollama_sends_it_for_what_the_client_asked(
    gw: Gateway,
    thinker: OllamaEmulator,
    path: str,
    body: dict[str, Any],
    options: dict[str, Any] | None,
) -> None:
    sent = {**body, "stream": True}
    if options is not None:
        sent["stream_options"] = options
    direct = httpx.post(f"{thinker.url}{path}", json=sent, timeout=10)
    relayed = httpx.post(f"{gw.url}{path}", json=sent, timeout=10)
    assert (direct.status_code, relayed.status_code) == (200, 200)
    assert _same_ids(relayed.text) == _same_ids(direct.text)
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    if path == "/v1/completions":
        expected = expected_reply(body["model"], prompt=body["prompt"])
    else:
        expected = expected_reply(body["model"], HI, tools=body.get("tools"))
    assert (span.status, span.input_tokens, span.output_tokens, span.token_source) == (
        "ok",
        expected.prompt_tokens,
        expected.output_tokens,
        "reported",
    )
    assert span.done_reason == ("tool_calls" if expected.tool_calls else expected.done_reason)


def test_streamed_reasoning_and_tool_calls_reach_the_official_client_and_count_once(
    gw: Gateway,
) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    expected = expected_reply("qwen3:8b", HI, tools=WEATHER)
    chunks = list(
        client.chat.completions.create(
            model="qwen3:8b",
            messages=HI,  # type: ignore[arg-type]
            tools=WEATHER,  # type: ignore[arg-type]
            stream=True,
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks)
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert reasoning == expected.thinking and expected.thinking
    (call,) = calls
    assert (call.index, call.type, call.function and call.function.name) == (
        0,
        "function",
        "get_current_weather",
    )
    assert (
        call.function
        and json.loads(call.function.arguments or "")
        == (expected.tool_calls[0]["function"]["arguments"])
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.input_tokens, span.output_tokens, span.token_source) == (
        expected.prompt_tokens,
        len(expected.thinking_pieces) + expected.tool_call_tokens,
        "reported",
    )
    assert span.cost_total == expected.prompt_tokens * 1000 + expected.output_tokens * 2000
