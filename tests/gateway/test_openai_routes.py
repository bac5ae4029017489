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
from ollama_meter.meter._usage import estimate_tokens, tokens_in_chars
from ollama_meter.testing import (
    DEFAULT_MODELS,
    THINKING_MODEL,
    Fault,
    OllamaEmulator,
    expected_reply,
)
from tests.factories import WEATHER_QUESTION, WEATHER_TOOLS, token_prices
from tests.gateway.conftest import Gateway


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
    ("/v1/chat/completions", {"model": "llama3.1:8b", "messages": WEATHER_QUESTION}),
    ("/v1/chat/completions", {"model": "qwen3:8b", "messages": WEATHER_QUESTION}),
    (
        "/v1/chat/completions",
        {"model": "qwen3:8b", "messages": WEATHER_QUESTION, "tools": WEATHER_TOOLS},
    ),
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
        expected = expected_reply(body["model"], WEATHER_QUESTION, tools=body.get("tools"))
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
    expected = expected_reply("qwen3:8b", WEATHER_QUESTION, tools=WEATHER_TOOLS)
    chunks = list(
        client.chat.completions.create(
            model="qwen3:8b",
            messages=WEATHER_QUESTION,  # type: ignore[arg-type]
            tools=WEATHER_TOOLS,  # type: ignore[arg-type]
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


@pytest.mark.parametrize("fault", [Fault.MIDSTREAM_ERROR, Fault.DROP])
@pytest.mark.parametrize("after", [1, 9])
def test_a_broken_reasoning_stream_ends_in_an_error_the_client_raises_and_an_estimated_span(
    gw: Gateway, thinker: OllamaEmulator, fault: Fault, after: int
) -> None:
    """Ollama's error event is relayed as it sent it, a stream that breaks off ends with the
    gateway's; either way the official client raises, and the span counts the chunks that
    came (a reasoning chunk is a token), estimated."""
    thinker.inject(fault, after_tokens=after)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    got: list[Any] = []
    answer = client.chat.completions.create(
        model="qwen3:8b",
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        stream=True,
    )
    with pytest.raises(openai.APIError):
        got.extend(answer)
    expected = expected_reply("qwen3:8b", WEATHER_QUESTION)
    assert len(got) == min(after, expected.output_tokens)
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.token_source) == (
        "error",
        "stream_error",
        "estimated",
    )
    assert (span.input_tokens, span.output_tokens) == (
        estimate_tokens(WEATHER_QUESTION[0]["content"]),
        len(got),
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_an_unknown_model_is_ollamas_404_byte_for_byte_and_an_error_span(
    gw: Gateway, thinker: OllamaEmulator, path: str, stream: bool
) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "stream": stream}
    body |= {"messages": WEATHER_QUESTION, "prompt": "hi", "input": "hi"}
    direct = httpx.post(f"{thinker.url}{path}", json=body, timeout=10)
    relayed = httpx.post(f"{gw.url}{path}", json=body, timeout=10)
    assert (direct.status_code, relayed.status_code) == (404, 404)
    assert relayed.content == direct.content
    assert relayed.json()["error"]["type"] == "not_found_error"
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.http_status) == ("error", "model_not_found", 404)
    assert (span.input_tokens, span.output_tokens, span.cost_total) == (0, 0, 0)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_stream_broken_after_its_tool_call_estimates_the_call_from_its_length(
    gw: Gateway, thinker: OllamaEmulator, path: str
) -> None:
    """A tool call streams whole, in one chunk, however many tokens the model wrote for it:
    a stream that breaks after it (no usage came) estimates the call from its length, as a
    whole reply's is, not as one token."""
    thinker.inject(Fault.DROP, after_tokens=1)
    body = {
        "model": "llama3.1:8b",
        "messages": WEATHER_QUESTION,
        "tools": WEATHER_TOOLS,
        "stream": True,
    }
    relayed = httpx.post(f"{gw.url}{path}", json=body, timeout=10)
    expected = expected_reply("llama3.1:8b", WEATHER_QUESTION, tools=WEATHER_TOOLS)
    (call,) = expected.tool_calls
    name, arguments = call["function"]["name"], call["function"]["arguments"]
    if path == "/api/chat":
        (chunk, _) = [json.loads(line) for line in relayed.text.splitlines()]
        assert chunk["message"]["tool_calls"] == [call]
        chars = len(json.dumps(name)) + len(json.dumps(arguments))
    else:
        (chunk, _) = [json.loads(e[6:]) for e in relayed.text.split("\n\n") if e]
        (written,) = chunk["choices"][0]["delta"]["tool_calls"]
        chars = len(json.dumps(name)) + len(written["function"]["arguments"])
    assert tokens_in_chars(chars) > 1
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.output_tokens, span.token_source) == (
        "error",
        tokens_in_chars(chars),
        "estimated",
    )


def test_a_schema_refused_after_the_reasoning_ends_the_stream_in_an_error_the_client_raises(
    gw: Gateway, thinker: OllamaEmulator
) -> None:
    """A thinking model's streamed chat runs without its ``response_format`` until the
    reasoning is sent; a schema Ollama then cannot read is refused inside the 200, and Ollama's
    OpenAI layer writes that error line as an empty chunk and ends the body, with no
    ``[DONE]`` and no word of why. The gateway ends the stream with its error event (the
    official client raises) and charges the reasoning streamed, estimated; the words that
    would mark it the caller's fault are lost upstream (on ``/api/chat`` they are kept,
    ``test_callers_own_500s.py``)."""
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "thing"}}}
    got: list[Any] = []
    answer = client.chat.completions.create(
        model="qwen3:8b",
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        stream=True,
        response_format=schema,  # type: ignore[arg-type]
    )
    with pytest.raises(openai.APIError, match="ended without its final chunk"):
        got.extend(answer)
    reasoning = expected_reply("qwen3:8b", WEATHER_QUESTION).thinking_pieces
    assert [c.choices[0].delta.model_extra["reasoning"] for c in got[: len(reasoning)]] == list(
        reasoning
    )
    assert all(not c.choices[0].delta.content for c in got)
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.token_source) == (
        "error",
        "stream_error",
        "estimated",
    )
    assert span.output_tokens == len(reasoning)
