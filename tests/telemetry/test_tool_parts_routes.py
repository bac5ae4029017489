"""Tool calls on the Anthropic and Responses routes, and an earlier reply's calls sent back,
exported as the GenAI conventions' parts.

``gen_ai.output.messages`` had no part for a ``/v1/messages`` reply's ``tool_use`` blocks or a
``/v1/responses`` reply's ``function_call`` items (one empty text part), and the request's
``tool_result`` blocks and ``function_call_output`` items were ``tool_call_response`` parts
without the id of the call they answer; an assistant message's own calls (a chat's
``tool_calls``, Anthropic's ``tool_use`` blocks, Responses ``function_call`` items) were left
out of ``gen_ai.input.messages``. Each is decoded here from a real OTLP receiver, through a
gateway's route, streamed and not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ollama_meter import MeteredClient, load_settings
from ollama_meter.records import SpanRecord
from ollama_meter.telemetry import _semconv as sc, telemetry_for
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream import tool_calls
from tests._otlp import OtlpHttpReceiver, SpanView, spans, wait_for
from tests.gateway.conftest import Gateway

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
ASKED = "weather in Paris?"


def _events(text: str) -> list[dict[str, Any]]:
    lines = [line.removeprefix("data: ") for line in text.splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


def _exported(
    rx: OtlpHttpReceiver, count: int
) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each span's input and output messages, in the order the calls began."""
    telemetry = telemetry_for(load_settings())
    assert telemetry is not None and telemetry.flush()
    views: list[SpanView] = wait_for(
        lambda: s if len(s := spans(rx)) == count else None, what=f"{count} spans"
    )
    telemetry.shutdown()
    return [
        (
            json.loads(view.attributes[sc.GEN_AI_INPUT_MESSAGES]),
            json.loads(view.attributes[sc.GEN_AI_OUTPUT_MESSAGES]),
        )
        for view in sorted(views, key=lambda v: v.start_ns)
    ]


@pytest.fixture
def gateway(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[str], Gateway]:
    def start(collector: str) -> Gateway:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
        return app_on(emulator.url, sqlite_url)

    return start


def test_the_messages_route_exports_tool_use_blocks_and_tool_results_by_id(
    gateway: Callable[[str], Gateway],
) -> None:
    """A reply's ``tool_use`` block (whole, and streamed as its start and its input's JSON
    pieces) is a ``tool_call`` part with the block's id and its input object; sent back in
    the history, with text before it, it is that message's part after its text, and the
    ``tool_result`` answering it a ``tool_call_response`` with its ``tool_use_id``."""
    tools = [{"name": "get_weather", "description": "The weather.", "input_schema": SCHEMA}]
    body = {"model": "llama3.1:8b", "max_tokens": 200, "tools": tools}
    asked = [{"role": "user", "content": ASKED}]
    with OtlpHttpReceiver() as rx:
        gw = gateway(rx.url)
        whole = gw.client.post("/v1/messages", json={**body, "messages": asked}).json()
        streamed = gw.client.post(
            "/v1/messages", json={**body, "messages": asked, "stream": True}
        ).text
        (use,) = whole["content"]
        history = [
            *asked,
            {"role": "assistant", "content": [{"type": "text", "text": "I look."}, use]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "rain"}],
            },
        ]
        answered = gw.client.post("/v1/messages", json={**body, "messages": history})
        assert answered.status_code == 200 and answered.json()["content"][0]["type"] == "text"
        exported = _exported(rx, 3)
    events = _events(streamed)
    (started,) = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    pieces = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert use["type"] == "tool_use" and set(use["input"]) == {"city"}
    assert started["type"] == "tool_use" and json.loads("".join(pieces)) == use["input"]
    for (_, output), block in zip(exported[:2], (use, started), strict=True):
        called = {"type": "tool_call", "id": block["id"], "name": "get_weather"}
        assert output == [
            {"role": "assistant", "parts": [{**called, "arguments": use["input"]}],
             "finish_reason": "tool_call"}
        ]  # fmt: skip
    said, _ = exported[2]
    assert said == [
        {"role": "user", "parts": [{"type": "text", "content": ASKED}]},
        {
            "role": "assistant",
            "parts": [
                {"type": "text", "content": "I look."},
                {"type": "tool_call", "id": use["id"], "name": "get_weather",
                 "arguments": use["input"]},
            ],
        },
        {"role": "tool", "parts": [
            {"type": "tool_call_response", "id": use["id"], "response": "rain"}]},
    ]  # fmt: skip


def test_the_responses_route_exports_function_calls_and_outputs_by_call_id(
    gateway: Callable[[str], Gateway],
) -> None:
    """A reply's ``function_call`` item (whole, and streamed as ``output_item.added`` and its
    arguments' deltas) is a ``tool_call`` part with its ``call_id`` and its arguments' JSON
    text; sent back as an input item, it is an assistant message's part, and the
    ``function_call_output`` answering it a ``tool_call_response`` with that ``call_id``."""
    tools = [{"type": "function", "name": "get_weather", "parameters": SCHEMA}]
    body = {"model": "llama3.1:8b", "tools": tools, "input": ASKED}
    with OtlpHttpReceiver() as rx:
        gw = gateway(rx.url)
        whole = gw.client.post("/v1/responses", json=body).json()
        streamed = gw.client.post("/v1/responses", json={**body, "stream": True}).text
        (item,) = whole["output"]
        items = [
            {"role": "user", "content": ASKED},
            {k: item[k] for k in ("type", "call_id", "name", "arguments")},
            {"type": "function_call_output", "call_id": item["call_id"], "output": "rain"},
        ]
        answered = gw.client.post("/v1/responses", json={**body, "input": items})
        assert answered.status_code == 200
        exported = _exported(rx, 3)
    events = _events(streamed)
    (added,) = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    pieces = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert item["type"] == "function_call" and set(json.loads(item["arguments"])) == {"city"}
    assert added["arguments"] == "" and "".join(pieces) == item["arguments"]
    for (_, output), made in zip(exported[:2], (item, added), strict=True):
        called = {"type": "tool_call", "id": made["call_id"], "name": "get_weather"}
        assert output == [
            {"role": "assistant", "parts": [{**called, "arguments": item["arguments"]}],
             "finish_reason": "tool_call"}
        ]  # fmt: skip
    said, _ = exported[2]
    assert said == [
        {"role": "user", "parts": [{"type": "text", "content": ASKED}]},
        {"role": "assistant", "parts": [
            {"type": "tool_call", "id": item["call_id"], "name": "get_weather",
             "arguments": item["arguments"]}]},
        {"role": "tool", "parts": [
            {"type": "tool_call_response", "id": item["call_id"], "response": "rain"}]},
    ]  # fmt: skip


def test_content_capture_off_keeps_no_tool_parts(emulator: OllamaEmulator, tmp_path: Path) -> None:
    """Without content capture, a call that answers an earlier call and makes one keeps none of
    them on its span (nor its prompt or reply), and the ledger's row is as it was."""
    ended: list[SpanRecord] = []
    client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}", on_end=ended.append)
    call = {"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    history = [
        {"role": "user", "content": ASKED},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "rain", "tool_call_id": "c1"},
        {"role": "user", "content": "and tomorrow?"},
    ]
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
    reply = client.chat(model="llama3.1:8b", messages=history, tools=[tool])
    assert reply["message"]["tool_calls"]
    (span,) = ended
    assert (span.said, span.told, span.called, span.prompt, span.reply) == ((), (), (), None, None)


def test_streamed_pieces_of_each_call_are_joined_by_their_block_or_item() -> None:
    """Two Anthropic calls, the second's input in three pieces; two Responses calls whose
    argument deltas interleave, each joined to the item it names."""
    blocks: list[object] = [
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "t1", "name": "a", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"n": 1}'}},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "t2", "name": "b", "input": {}}},
        *({"type": "content_block_delta", "index": 2,
           "delta": {"type": "input_json_delta", "partial_json": p}}
          for p in ('{"q": ', '"x"', "}")),
        {"type": "content_block_start", "index": 3,
         "content_block": {"type": "tool_use", "id": "t3", "name": "c", "input": {}}},
    ]  # fmt: skip
    assert tool_calls(blocks) == (("t1", "a", {"n": 1}), ("t2", "b", {"q": "x"}), ("t3", "c", {}))
    added = [
        {"type": "response.output_item.added", "output_index": i,
         "item": {"id": f"fc_{i}", "type": "function_call", "call_id": f"call_{i}",
                  "name": name, "arguments": ""}}
        for i, name in enumerate("ab")
    ]  # fmt: skip
    deltas = [
        {"type": "response.function_call_arguments.delta", "item_id": item, "delta": piece}
        for item, piece in (("fc_1", "{"), ("fc_0", '{"n"'), ("fc_1", "}"), ("fc_0", ": 1}"))
    ]
    assert tool_calls([*added, *deltas]) == (("call_0", "a", '{"n": 1}'), ("call_1", "b", "{}"))
