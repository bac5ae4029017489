"""The emulator's ``/v1`` chat thinks and calls tools as Ollama's OpenAI layer writes them.

Ollama converts its native chat answer: the thinking goes in ``reasoning`` (a chunk of its
own when streamed), a tool call comes whole in one chunk with an ``id``, an ``index`` and
its arguments as a JSON string, and the finish reason is then ``tool_calls``. A text
completion asked for usage carries a zero ``usage`` on every chunk before the usage chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollama_meter.testing import DEFAULT_MODELS, THINKING_MODEL, OllamaEmulator, expected_reply
from tests.factories import WEATHER_QUESTION, WEATHER_TOOLS


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with (
        OllamaEmulator(models=[*DEFAULT_MODELS, THINKING_MODEL]) as emu,
        httpx.Client(base_url=emu.url, timeout=10) as client,
    ):
        emu.latency = emu.token_latency = 0.0
        yield client


def events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    items = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    return [json.loads(item) for item in items[:-1]]


@pytest.mark.parametrize("effort", [None, "low", "high"])
def test_a_thinking_model_reasons_in_reasoning_whole_and_streamed(
    http: httpx.Client, effort: str | None
) -> None:
    body: dict[str, Any] = {"model": "qwen3:8b", "messages": WEATHER_QUESTION}
    if effort:
        body["reasoning_effort"] = effort
    expected = expected_reply("qwen3:8b", WEATHER_QUESTION, think=effort)
    whole = http.post("/v1/chat/completions", json=body).json()
    (choice,) = whole["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": expected.content,
        "reasoning": expected.thinking,
    }
    assert choice["finish_reason"] == "stop"
    assert whole["usage"]["completion_tokens"] == expected.output_tokens
    chunks = events(http.post("/v1/chat/completions", json={**body, "stream": True}))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    thoughts = [d for d in deltas if "reasoning" in d]
    assert all(d["content"] == "" for d in thoughts)
    assert "".join(d["reasoning"] for d in thoughts) == expected.thinking
    assert "".join(d["content"] for d in deltas) == expected.content
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"


def test_reasoning_effort_none_turns_thinking_off_and_others_are_refused(
    http: httpx.Client,
) -> None:
    body = {"model": "qwen3:8b", "messages": WEATHER_QUESTION, "reasoning": {"effort": "none"}}
    message = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": expected_reply("qwen3:8b", WEATHER_QUESTION).content,
    }
    bad = http.post("/v1/chat/completions", json={**body, "reasoning": {"effort": "max"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == (
        'invalid reasoning value: \'max\' (must be "high", "medium", "low", or "none")'
    )
    typed = http.post("/v1/chat/completions", json={**body, "reasoning_effort": 3})
    assert typed.status_code == 400
    assert typed.json()["error"]["message"] == (
        "json: cannot unmarshal number into Go struct field "
        "ChatCompletionRequest.reasoning_effort of type string"
    )
    cannot = {"model": "llama3.1:8b", "messages": WEATHER_QUESTION, "reasoning_effort": "low"}
    refused = http.post("/v1/chat/completions", json=cannot)
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": '"llama3.1:8b" does not support thinking',
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_a_tool_call_comes_whole_with_an_id_and_finish_reason_tool_calls(
    http: httpx.Client,
) -> None:
    body: dict[str, Any] = {
        "model": "llama3.1:8b",
        "messages": WEATHER_QUESTION,
        "tools": WEATHER_TOOLS,
    }
    expected = expected_reply("llama3.1:8b", WEATHER_QUESTION, tools=WEATHER_TOOLS)
    (call,) = expected.tool_calls
    whole = http.post("/v1/chat/completions", json=body).json()
    (choice,) = whole["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == ""
    (written,) = choice["message"]["tool_calls"]
    assert written["id"].startswith("call_") and len(written["id"]) == 13
    assert {k: v for k, v in written.items() if k != "id"} == {
        "index": 0,
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "arguments": json.dumps(call["function"]["arguments"], separators=(",", ":")),
        },
    }
    assert whole["usage"]["completion_tokens"] == expected.output_tokens
    chunks = events(http.post("/v1/chat/completions", json={**body, "stream": True}))
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "tool_calls"]
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"] == written["function"]
    assert "tool_calls" not in chunks[1]["choices"][0]["delta"]
    answered = [*WEATHER_QUESTION, {"role": "tool", "content": "sunny"}]
    after = http.post("/v1/chat/completions", json={**body, "messages": answered}).json()
    assert after["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in after["choices"][0]["message"]


def test_a_completion_asked_for_usage_carries_a_zero_usage_on_every_chunk(
    http: httpx.Client,
) -> None:
    body = {
        "model": "qwen2.5:7b",
        "prompt": "why is the sky blue",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    expected = expected_reply("qwen2.5:7b", prompt="why is the sky blue")
    chunks = events(http.post("/v1/completions", json=body))
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert all(c["usage"] == zero for c in chunks[:-1])
    assert list(chunks[0]) == [
        "id",
        "object",
        "created",
        "choices",
        "model",
        "system_fingerprint",
        "usage",
    ]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == expected.output_tokens
    unasked = events(http.post("/v1/completions", json={**body, "stream_options": None}))
    assert all("usage" not in c for c in unasked)
