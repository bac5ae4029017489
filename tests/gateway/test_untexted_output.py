"""What Ollama did not count is estimated from all of it: thinking, tool calls, tool lists.

A reply's thinking and tool calls are tokens the model generated, though not reply text.
When Ollama writes no counts (a 0 is a count it did not take) or a stream breaks before
its usage, the meter estimates the reply from its length: the same reply, written in
each route's shape, is the same estimate on ``/v1/chat/completions``, ``/v1/messages``
and ``/v1/responses``; and a tool call that streams whole in one piece (Anthropic's
``input_json_delta``, the Responses API's ``function_call_arguments.delta``) counts by
its length, not as one token. Likewise a prompt Ollama did not count is estimated from all
it sends, its tool definitions too, not only its texts.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._usage import tokens_in_chars
from tests.gateway.conftest import Gateway

models = itertools.count()  # each example its own model: no circuit opens across examples
ASKED = [{"role": "user", "content": "what is the weather in paris"}]


def whole(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(raw) + raw


def events(items: list[dict[str, Any]]) -> bytes:
    """A stream of ``items`` that breaks off after them (no end, no usage)."""
    raw = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in items)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(raw) + raw


def answers(text: str, thinking: str, name: str, arguments: str) -> dict[str, dict[str, Any]]:
    """One reply (text, thinking, a tool call) as each route's whole answer, without counts."""
    call = {"name": name, "arguments": arguments}
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "reasoning": thinking,
                        "tool_calls": [{"id": "c1", "index": 0, "type": "function", "function": call}]},
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }  # fmt: skip
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "thinking", "thinking": thinking, "signature": ""},
            {"type": "text", "text": text},
            {"type": "tool_use", "id": "t1", "name": name, "input": json.loads(arguments)},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "m",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": thinking}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]},
            {"type": "function_call", "call_id": "c1", **call},
        ],
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }  # fmt: skip
    return {"/v1/chat/completions": chat, "/v1/messages": message, "/v1/responses": response}


def request(path: str, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": f"m{next(models)}", "stream": stream}
    if path == "/v1/responses":
        return {**body, "input": ASKED[0]["content"]}
    return {**body, "messages": ASKED, **({"max_tokens": 100} if path == "/v1/messages" else {})}


def output_tokens(gw: Gateway, path: str, body: dict[str, Any]) -> tuple[str, int]:
    reply = gw.client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert span.token_source == "estimated"
    assert span.cost_total == span.input_tokens * 1000 + span.output_tokens * 2000
    return span.status, span.output_tokens


names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
arguments = st.dictionaries(
    st.text("abcxyz", min_size=1, max_size=6), st.text(max_size=40) | st.integers(), max_size=4
).map(lambda args: json.dumps(args, ensure_ascii=False))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=st.text(max_size=30), thinking=st.text(max_size=200), name=names, args=arguments)
@example(text="", thinking="", name="get_weather", args=json.dumps({"city": "Paris" * 100}))
def test_a_reply_without_counts_is_estimated_alike_on_every_route(
    upstream: tuple[Gateway, Any], text: str, thinking: str, name: str, args: str
) -> None:
    gw, server = upstream
    call = len(json.dumps(name)) + len(args)  # the call as the model writes it: name, arguments
    for path, answer in answers(text, thinking, name, args).items():
        server.body = whole(answer)
        assert output_tokens(gw, path, request(path)) == (
            "ok",
            tokens_in_chars(len(text) + len(thinking) + call),
        ), path
    # A stream that breaks after its tool call (its input, or arguments, in one piece).
    message_call = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "usage": {"input_tokens": 0, "output_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t1", "name": name, "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": args}},
    ]  # fmt: skip
    response_call = [
        {"type": "response.created", "response": {"id": "resp_1", "object": "response", "status": "in_progress", "model": "m"}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "function_call", "call_id": "c1", "name": name, "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": args},
    ]  # fmt: skip
    streamed = max(1, tokens_in_chars(len(json.dumps(name)))) + max(1, tokens_in_chars(len(args)))
    for path, items in (("/v1/messages", message_call), ("/v1/responses", response_call)):
        server.body = events(items)
        assert output_tokens(gw, path, request(path, stream=True)) == ("error", streamed), path


def broken(path: str) -> bytes:
    """A stream that breaks after its first piece of text: Ollama's counts never come."""
    if path == "/api/chat":
        line = {"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": False}
        raw = json.dumps(line).encode() + b"\n"
        kind = b"application/x-ndjson"
    else:
        item = {
            "/v1/chat/completions": {"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
            "/v1/messages": {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
            "/v1/responses": {"type": "response.output_text.delta", "delta": "hi", "item_id": "m1"},
        }[path]  # fmt: skip
        raw, kind = f"data: {json.dumps(item)}\n\n".encode(), b"text/event-stream"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(raw) + raw


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(["/api/chat", "/v1/chat/completions", "/v1/messages", "/v1/responses"]),
    described=st.lists(st.text(min_size=100, max_size=2000), min_size=1, max_size=8),
)
def test_a_prompt_ollama_did_not_count_is_estimated_with_its_tools(
    upstream: tuple[Gateway, Any], path: str, described: list[str]
) -> None:
    """A stream that breaks before its counts is charged its prompt, estimated: all of it, as
    a tpm limit counts it, its tool definitions too (an agent's prompt is mostly tools), not
    a few tokens for its one line of text."""
    gw, server = upstream
    server.body = broken(path)
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [
        {"name": f"t{i}", "description": d, "input_schema": parameters}
        if path == "/v1/messages"
        else {"type": "function", **({"name": f"t{i}", "description": d, "parameters": parameters} if path == "/v1/responses" else {"function": {"name": f"t{i}", "description": d, "parameters": parameters}})}
        for i, d in enumerate(described)
    ]  # fmt: skip
    body = {**request(path, stream=True), "tools": tools}
    if path == "/api/chat":
        body = {"model": body["model"], "messages": ASKED, "tools": tools, "stream": True}
    reply = gw.client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert (span.status, span.token_source) == ("error", "estimated")
    descriptions = tokens_in_chars(sum(len(d) for d in described))
    assert span.input_tokens > descriptions  # each tool's description, at least
    assert span.cost_total == span.input_tokens * 1000 + span.output_tokens * 2000
