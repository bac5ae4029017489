"""Tool calls and their results are exported as the GenAI conventions' message parts.

The conventions' ``gen-ai-output-messages.json`` and ``gen-ai-input-messages.json`` give a
message's parts a ``type``: ``text`` (``content``), ``tool_call`` (``id``, ``name``,
``arguments``) and ``tool_call_response`` (``id``, ``response``). ometer exported text parts
only: a reply in which the model called tools exported none of its calls (one empty text
part), and a ``tool`` message the caller sent back was a text like any other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter import MeteredClient, load_settings
from ollama_meter.meter._request import facts_of
from ollama_meter.records import storable_text
from ollama_meter.telemetry import _semconv as sc, telemetry_for
from ollama_meter.telemetry._observer import MAX_EXPORTED_TEXT
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream import tool_calls
from ollama_meter.upstream._wire import OpenAIReader
from tests._observed import observed
from tests._otlp import OtlpHttpReceiver, spans, wait_for
from tests.factories import make_span
from tests.gateway.conftest import Gateway

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_a_chats_tool_calls_and_results_reach_a_collector_as_parts(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the meter and a real OTLP receiver: the reply's call (streamed, and not), and
    the history sent back with the call and its result."""
    asked = [{"role": "user", "content": "weather in Paris?"}]
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
        whole = client.chat(model="llama3.1:8b", messages=asked, tools=[WEATHER])
        chunks = list(
            client.chat(model="llama3.1:8b", messages=asked, tools=[WEATHER], stream=True)
        )
        (call,) = whole["message"]["tool_calls"]
        streamed = [c for chunk in chunks for c in chunk["message"].get("tool_calls") or []]
        history = [
            *asked,
            {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
            {"role": "tool", "content": '{"sky": "rain"}', "tool_name": "get_weather"},
            {"role": "user", "content": "and tomorrow?"},
        ]
        client.chat(model="llama3.1:8b", messages=history)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views = wait_for(lambda: s if len(s := spans(rx)) == 3 else None, what="three spans")
        telemetry.shutdown()
    first, second, third = sorted(views, key=lambda v: v.start_ns)
    arguments = dict(call["function"]["arguments"])
    assert set(arguments) == {"city"} and [c["function"]["arguments"] for c in streamed] == [
        arguments
    ]
    called = {"type": "tool_call", "name": "get_weather", "arguments": arguments}
    for view in (first, second):
        assert json.loads(view.attributes[sc.GEN_AI_OUTPUT_MESSAGES]) == [
            {"role": "assistant", "parts": [called], "finish_reason": "tool_call"}
        ]  # Ollama's "stop": the conventions' word for a reply that stopped to call a tool
        assert list(view.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS]) == ["stop"]
    assert json.loads(third.attributes[sc.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "weather in Paris?"}]},
        {"role": "assistant", "parts": [called]},  # the earlier reply's call, not text
        {"role": "tool", "parts": [{"type": "tool_call_response", "response": '{"sky": "rain"}'}]},
        {"role": "user", "parts": [{"type": "text", "content": "and tomorrow?"}]},
    ]


def test_an_openai_chats_tool_result_keeps_the_id_of_its_call() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "tool", "content": "", "tool_call_id": "call_empty"},  # says nothing
            {"role": "tool", "content": [{"type": "text", "text": "rain"}], "tool_call_id": "c1"},
            {"role": "tool", "content": "sun"},
        ]
    }
    facts = facts_of("openai.chat", body)
    said, told = facts.told_apart()
    span = make_span(prompt=facts.prompt_text, said=said, told=told)
    got = observed(span, capture_content=True).attributes or {}
    assert json.loads(str(got[sc.GEN_AI_INPUT_MESSAGES])) == [
        {"role": "user", "parts": [{"type": "text", "content": "weather?"}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "rain"}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "response": "sun"}]},
    ]


def test_an_openai_stream_sends_a_call_in_pieces_exported_whole() -> None:
    """OpenAI streams one call as pieces of the same ``index``: its id and name, then its
    arguments' text a piece at a time; two calls, one after the other."""
    chunks: list[dict[str, Any]] = [
        {"choices": [{"delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}}]},
        {"choices": [{"delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"city": '}}]}}]},
        {"choices": [{"delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [
            {"index": 1, "id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]  # fmt: skip
    reader = OpenAIReader("openai.chat")
    pieces = [e.calls for chunk in chunks for e in reader.read(chunk) if hasattr(e, "calls")]
    called = tool_calls([p for p in pieces if p is not None])
    assert called == (
        ("call_a", "get_weather", '{"city": "Paris"}'),
        ("call_b", "get_time", "{}"),
    )
    span = make_span(reply="", called=called, done_reason="tool_calls")
    got = observed(span, capture_content=True).attributes or {}
    assert json.loads(str(got[sc.GEN_AI_OUTPUT_MESSAGES])) == [
        {
            "role": "assistant",
            "parts": [
                {"type": "tool_call", "id": "call_a", "name": "get_weather",
                 "arguments": '{"city": "Paris"}'},
                {"type": "tool_call", "id": "call_b", "name": "get_time", "arguments": "{}"},
            ],
            "finish_reason": "tool_call",
        }
    ]  # fmt: skip


def test_content_capture_off_exports_no_tool_calls() -> None:
    span = make_span(reply="ok", called=(("c", "f", {"a": 1}),), told=(("c", ()),))
    got = observed(span, capture_content=False).attributes or {}
    assert sc.GEN_AI_OUTPUT_MESSAGES not in got and sc.GEN_AI_INPUT_MESSAGES not in got


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
CALLS = st.lists(
    st.tuples(
        st.none() | st.text(max_size=40),
        st.text(max_size=40),
        JSON | st.text(max_size=300) | st.just('"\\' * 5_000),
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(
    reply=st.text(max_size=200) | st.just("x" * 40_000),
    calls=CALLS,
    limit=st.integers(0, 600) | st.just(MAX_EXPORTED_TEXT),
)
@example(reply="", calls=[("c", "f", {"k": "v" * 30_000})], limit=MAX_EXPORTED_TEXT)
@example(reply="hi", calls=[(None, "f", None), ("i", "", [1, [2, {"a": "\ud800"}]])], limit=90)
def test_any_tool_calls_are_whole_json_within_the_bound(
    reply: str, calls: list[tuple[str | None, str, Any]], limit: int
) -> None:
    """Whatever the calls and the length limit: whole JSON within it, each part of the
    conventions' shape, the calls in order after the text, their names and ids whole where
    short, what is cut ending in "…"; or, with no room for any of it, not sent."""
    span = make_span(reply=reply, called=tuple(calls), done_reason="stop")
    got = observed(span, capture_content=True, max_length=limit).attributes or {}
    finish = "tool_call" if calls else "stop"  # the conventions' word for a reply that called
    if sc.GEN_AI_OUTPUT_MESSAGES not in got:  # not even the newest part, cut to "…", fits
        least: dict[str, Any] = {"type": "text", "content": "…" if reply else ""}
        if calls:
            ident, name, arguments = calls[-1]
            short = "…" if len(json.dumps(arguments)) > 3 else arguments
            least = {"type": "tool_call", "id": ident, "name": name, "arguments": short}
            least = {k: v for k, v in least.items() if v is not None or k == "arguments"}
        shown = [{"role": "assistant", "parts": [least], "finish_reason": finish}]
        assert len(json.dumps(shown, ensure_ascii=False)) > limit
        return
    text = str(got[sc.GEN_AI_OUTPUT_MESSAGES])
    assert len(text) <= min(limit, MAX_EXPORTED_TEXT)
    (message,) = json.loads(text)
    assert message["role"] == "assistant" and message["finish_reason"] == finish
    parts = message["parts"]
    texts = [p for p in parts if p["type"] == "text"]
    shown = parts[len(texts) :]
    assert all(set(p) == {"type", "content"} for p in texts)
    assert shown == [p for p in parts if p["type"] == "tool_call"]
    # The text first, then the calls in order; what no room is left for, the oldest, left out
    # (the pre-pass gives the newest parts the room first, as it does a message's texts).
    assert len(texts) <= (1 if reply or not calls else 0)
    assert len(shown) == len(calls) if texts else 0 < len(shown) <= len(calls)
    kept = calls[len(calls) - len(shown) :]
    for part, (ident, name, arguments) in zip(shown, kept, strict=True):
        assert part["name"] == storable_text(name, len(name) + 1)
        assert part.get("id") == (None if ident is None else storable_text(ident, len(ident) + 1))
        if isinstance(arguments, str):
            whole = storable_text(arguments, len(arguments) + 1)
        else:
            dumped = json.dumps(arguments, ensure_ascii=False)
            whole = json.loads(storable_text(dumped, len(dumped) + 1))
        exported = part["arguments"]
        if exported != whole:  # cut: its text (an object's JSON text) ending in "…"
            written = whole if isinstance(whole, str) else json.dumps(whole, ensure_ascii=False)
            assert isinstance(exported, str) and exported.endswith("…")
            assert written.startswith(exported[:-1])


def _sse(text: str) -> list[dict[str, Any]]:
    lines = [line.removeprefix("data: ") for line in text.splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_the_gateways_openai_route_exports_each_call_with_its_id(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through a gateway's OpenAI route (streamed, and not) to a real OTLP receiver: the call
    with its id and its arguments' JSON text as the model wrote it; the history sent back
    with the call's result, which names the call by its id."""
    asked = [{"role": "user", "content": "weather in Paris?"}]
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
        gw = app_on(emulator.url, sqlite_url)
        body = {"model": "llama3.1:8b", "messages": asked, "tools": [WEATHER]}
        whole = gw.client.post("/v1/chat/completions", json=body).json()
        streamed = gw.client.post("/v1/chat/completions", json={**body, "stream": True}).text
        (call,) = whole["choices"][0]["message"]["tool_calls"]
        deltas = [c["choices"][0]["delta"] for c in _sse(streamed) if c.get("choices")]
        (piece,) = [c for d in deltas for c in d.get("tool_calls") or []]
        history = [
            *asked,
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": '{"sky": "rain"}', "tool_call_id": call["id"]},
        ]
        answered = gw.client.post("/v1/chat/completions", json={**body, "messages": history})
        assert answered.status_code == 200
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views = wait_for(lambda: s if len(s := spans(rx)) == 3 else None, what="three spans")
        telemetry.shutdown()
    first, second, third = sorted(views, key=lambda v: v.start_ns)
    for view, wrote in ((first, call), (second, piece)):
        assert json.loads(view.attributes[sc.GEN_AI_OUTPUT_MESSAGES]) == [
            {
                "role": "assistant",
                "parts": [
                    {
                        "type": "tool_call",
                        "id": wrote["id"],
                        "name": "get_weather",
                        "arguments": wrote["function"]["arguments"],
                    }
                ],
                "finish_reason": "tool_call",
            }
        ]
    assert set(json.loads(call["function"]["arguments"])) == {"city"}
    assert json.loads(third.attributes[sc.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "weather in Paris?"}]},
        {
            "role": "assistant",
            "parts": [json.loads(first.attributes[sc.GEN_AI_OUTPUT_MESSAGES])[0]["parts"][0]],
        },
        {
            "role": "tool",
            "parts": [
                {"type": "tool_call_response", "id": call["id"], "response": '{"sky": "rain"}'}
            ],
        },
    ]


def test_a_streams_tool_calls_are_kept_to_a_bound_of_characters_not_only_of_pieces() -> None:
    """A hostile upstream streams a tool call of 100,000 characters in each of 2,000 pieces
    (a frame holds 64 MiB): the call kept every piece's calls up to 1,024 pieces, whatever
    their size, so it could hold 64 GiB until it ended, to export 16 KB of them. It keeps the
    pieces until :data:`KEPT_REPLY_CHARS` of calls, as it does the reply's text."""
    from zoneinfo import ZoneInfo

    from ollama_meter.meter import MeteredCall
    from ollama_meter.meter._call import KEPT_REPLY_CHARS
    from ollama_meter.pricing import PriceBook
    from ollama_meter.upstream import Delta
    from ollama_meter.upstream._wire import call_chars

    arguments = {"q": "x" * 99_990}
    size = call_chars("f", arguments)
    span = make_span(stream=True, input_tokens=0, output_tokens=0)
    call = MeteredCall(
        span, "hi", PriceBook([], tz=ZoneInfo("UTC"), currency="USD"), keep_calls=True
    )
    for _ in range(2_000):
        piece = [{"function": {"name": "f", "arguments": arguments}}]
        call.observe(Delta("", True, size, size, piece))
    kept = call.calls or []
    assert len(kept) == -(-KEPT_REPLY_CHARS // size)  # the piece that reaches the bound too
    assert len(tool_calls(kept)) == len(kept) and call.streamed_tokens > 2_000


def test_a_prompt_a_hook_rewrote_is_one_user_message_without_the_calls_told_of() -> None:
    """What the messages said beside their texts is of the prompt they measure: a prompt a
    hook rewrote is exported as one user text, not that text with the old prompt's calls."""
    told = ((None, (("c1", "f", {"a": 1}),)),)
    for prompt, parts in (
        ("", [{"type": "tool_call", "id": "c1", "name": "f", "arguments": {"a": 1}}]),
        ("rewritten", [{"type": "text", "content": "rewritten"}]),
    ):
        span = make_span(prompt=prompt, said=(("assistant", ()),), told=told)
        got = observed(span, capture_content=True).attributes or {}
        role = "assistant" if not prompt else "user"
        assert json.loads(str(got[sc.GEN_AI_INPUT_MESSAGES])) == [{"role": role, "parts": parts}]


def test_a_historys_earlier_calls_are_kept_to_the_bounds_of_a_replys() -> None:
    """2,000 earlier calls, then three of 600,000 characters each: the newest 1,024 calls are
    kept, and of the long ones the newest until 1,000,000 characters (the one that reaches
    the bound too), as a reply's calls are; every message still says its text."""
    from ollama_meter.meter._told import KEPT_CALL_CHARS, KEPT_CALLS

    def turn(i: int, arguments: object) -> list[dict[str, Any]]:
        call = {"id": f"c{i}", "function": {"name": "f", "arguments": arguments}}
        return [
            {"role": "assistant", "content": f"t{i}", "tool_calls": [call]},
            {"role": "tool", "content": "r", "tool_call_id": f"c{i}"},
        ]

    many = [m for i in range(2_000) for m in turn(i, {"i": i})]
    long = [m for i in range(3) for m in turn(2_000 + i, "x" * 600_000)]
    for messages, kept in ((many, KEPT_CALLS), (long, -(-KEPT_CALL_CHARS // 600_000))):
        said, told = facts_of("openai.chat", {"messages": messages}).told_apart()
        assert len(said) == len(told) == len(messages)
        calls = [c for _, made in told for c in made]
        assert [c[0] for c in calls] == [m["tool_calls"][0]["id"] for m in messages[::2]][-kept:]
        assert [answer for answer, _ in told[1::2]] == [c["tool_call_id"] for c in messages[1::2]]
