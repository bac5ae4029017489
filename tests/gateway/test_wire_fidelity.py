"""The gateway reads Ollama's documented fields as Ollama does, and meters what they mean.

Driven through the official ``ollama`` client against the emulator, which answers as
Ollama's API documentation says Ollama does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import ollama
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._usage import tokens_in_chars
from ollama_meter.testing import (
    DEFAULT_MODELS,
    THINKING_MODEL,
    Fault,
    OllamaEmulator,
    expected_embedding,
    expected_reply,
)
from tests.factories import WEATHER_QUESTION, WEATHER_TOOLS, token_prices
from tests.gateway.conftest import Gateway


def spans(gw: Gateway) -> list[Any]:
    return gw.ledger.latest(SpanFilter(), 100)


@pytest.mark.parametrize(
    "fields",
    [
        {"system": "You are a terse assistant for the sales team"},
        {"suffix": "    return result"},
        {"template": "{{ .System }} {{ .Prompt }}"},
        {"images": ["iVBORw0KGgo="]},
        {"system": "You are terse", "keep_alive": 0},
    ],
)
def test_a_generate_with_an_empty_prompt_only_loads_whatever_else_it_sends(
    sqlite_gateway: Gateway, fields: dict[str, Any]
) -> None:
    """Ollama loads the model for any generate whose ``prompt`` is empty (unloads it with
    ``keep_alive: 0``), whatever system message, suffix, template or images come with it:
    nothing is evaluated. The span counts the 0 tokens Ollama means, not an estimate of
    texts Ollama never read."""
    reply = ollama.Client(host=sqlite_gateway.url).generate(model="llama3.1:8b", **fields)
    reason = "unload" if "keep_alive" in fields else "load"
    assert (reply.done_reason, reply.response, reply.eval_count) == (reason, "", None)
    (span,) = spans(sqlite_gateway)
    assert (span.status, span.done_reason) == ("ok", reason)
    assert (span.input_tokens, span.output_tokens, span.token_source) == (0, 0, "reported")
    assert (span.prompt_eval_duration_ns, span.eval_duration_ns) == (0, 0)


@pytest.fixture
def thinker() -> Iterator[OllamaEmulator]:
    """An emulator that has also pulled a model that thinks."""
    with OllamaEmulator(models=[*DEFAULT_MODELS, THINKING_MODEL]) as emu:
        yield emu


@pytest.fixture
def thinking_gateway(
    serve_on: Callable[..., Gateway], thinker: OllamaEmulator, sqlite_url: str
) -> Gateway:
    gw = serve_on(thinker.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    return gw


def _streamed(answer: Any, stream: bool) -> tuple[str, str, list[Any], Any]:
    """Thinking, reply text, tool calls and the last chunk of an answer (streamed or not)."""
    chunks = list(answer) if stream else [answer]
    thinking = content = ""
    calls: list[Any] = []
    for chunk in chunks:
        part = chunk.message if hasattr(chunk, "message") else chunk
        thinking += part.thinking or ""
        content += (part.content if hasattr(chunk, "message") else part.response) or ""
        calls += getattr(part, "tool_calls", None) or []
    return thinking, content, calls, chunks[-1]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("operation", ["chat", "generate"])
@pytest.mark.parametrize("think", [None, True, "high"])
def test_thinking_counts_once_in_the_reply_tokens(
    thinking_gateway: Gateway, operation: str, stream: bool, think: bool | str | None
) -> None:
    """A thinking model thinks unless told not to; Ollama's ``eval_count`` counts every token
    it generated, thinking included. The span counts that once: the reply's tokens are the
    thinking's and the text's together, reported, and priced as such."""
    client = ollama.Client(host=thinking_gateway.url)
    if operation == "chat":
        answer = client.chat(
            model="qwen3:8b", messages=WEATHER_QUESTION, stream=stream, think=think
        )
        expected = expected_reply("qwen3:8b", WEATHER_QUESTION, think=think)
    else:
        prompt = WEATHER_QUESTION[0]["content"]
        answer = client.generate(model="qwen3:8b", prompt=prompt, stream=stream, think=think)
        expected = expected_reply("qwen3:8b", prompt=prompt, think=think)
    thinking, content, _, last = _streamed(answer, stream)
    assert (thinking, content) == (expected.thinking, expected.content)
    assert expected.thinking and last.eval_count == expected.output_tokens
    assert expected.output_tokens == len(expected.thinking_pieces) + len(expected.pieces)
    (span,) = spans(thinking_gateway)
    assert (span.status, span.input_tokens, span.output_tokens, span.token_source) == (
        "ok",
        expected.prompt_tokens,
        expected.output_tokens,
        "reported",
    )
    assert span.cost_total == expected.prompt_tokens * 1000 + expected.output_tokens * 2000


def test_think_false_turns_thinking_off_and_a_model_that_cannot_think_refuses_it(
    thinking_gateway: Gateway,
) -> None:
    """``think: false`` on a thinking model answers without thinking; ``think`` on a model
    that cannot think is Ollama's 400, relayed as it came, and a span of the refusal."""
    client = ollama.Client(host=thinking_gateway.url)
    plain = client.chat(model="qwen3:8b", messages=WEATHER_QUESTION, think=False)
    assert plain.message.thinking is None
    assert (
        plain.eval_count == expected_reply("qwen3:8b", WEATHER_QUESTION, think=False).output_tokens
    )
    for think in (True, "low"):
        with pytest.raises(ollama.ResponseError) as refused:
            client.chat(model="llama3.1:8b", messages=WEATHER_QUESTION, think=think)
        assert (refused.value.status_code, refused.value.error) == (
            400,
            '"llama3.1:8b" does not support thinking',
        )
    refusals = [s for s in spans(thinking_gateway) if s.request_model == "llama3.1:8b"]
    assert [(s.status, s.http_status) for s in refusals] == [("error", 400)] * 2


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["llama3.1:8b", "qwen3:8b"])
def test_a_reply_that_only_calls_a_tool_counts_its_tokens(
    thinking_gateway: Gateway, stream: bool, model: str
) -> None:
    """A chat offered tools may answer with a tool call and no text at all: the call is
    generated output, and ``eval_count`` counts it (with any thinking before it)."""
    client = ollama.Client(host=thinking_gateway.url)
    answer = client.chat(model=model, messages=WEATHER_QUESTION, tools=WEATHER_TOOLS, stream=stream)
    expected = expected_reply(model, WEATHER_QUESTION, tools=WEATHER_TOOLS)
    thinking, content, calls, last = _streamed(answer, stream)
    assert (content, thinking) == ("", expected.thinking)
    assert [c.model_dump(exclude_none=True) for c in calls] == list(expected.tool_calls)
    assert expected.tool_call_tokens > 0 and last.eval_count == expected.output_tokens
    (span,) = spans(thinking_gateway)
    assert (span.input_tokens, span.output_tokens, span.token_source) == (
        expected.prompt_tokens,
        expected.output_tokens,
        "reported",
    )
    # The tool's result in the next turn: the model answers in text.
    turn = [
        *WEATHER_QUESTION,
        {"role": "assistant", "content": "", "tool_calls": list(expected.tool_calls)},
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_current_weather"},
    ]
    reply = client.chat(model=model, messages=turn, tools=WEATHER_TOOLS)
    assert reply.message.content == expected_reply(model, turn, tools=WEATHER_TOOLS).content != ""


@pytest.mark.parametrize(("model", "tools"), [("qwen3:8b", None), ("llama3.1:8b", WEATHER_TOOLS)])
def test_a_whole_reply_without_counts_is_estimated_from_its_thinking_and_tool_calls_too(
    thinking_gateway: Gateway,
    thinker: OllamaEmulator,
    model: str,
    tools: list[Any] | None,
) -> None:
    """An answer without counts (a proxy that drops them) is estimated from what it holds:
    the thinking and the tool calls are generated output as much as the text, so a reply
    that only calls a tool is never recorded as free."""
    thinker.inject(Fault.OMIT_COUNTS)
    body: dict[str, Any] = {"model": model, "messages": WEATHER_QUESTION, "stream": False}
    if tools:
        body["tools"] = tools
    answer = thinking_gateway.client.post("/api/chat", json=body)
    assert answer.status_code == 200, answer.text
    expected = expected_reply(model, WEATHER_QUESTION, tools=tools)
    calls = "".join(
        json.dumps(call["function"]["name"]) + json.dumps(call["function"]["arguments"])
        for call in expected.tool_calls
    )
    written = len(expected.thinking) + len(expected.content) + len(calls)
    (span,) = spans(thinking_gateway)
    assert (span.output_tokens, span.token_source) == (tokens_in_chars(written), "estimated")
    assert span.output_tokens > 0


@pytest.mark.parametrize(
    ("keep_alive", "reason"), [("0h", "unload"), ("-0s", "unload"), (-1, "load"), ("1h30m", "load")]
)
def test_keep_alive_in_any_form_ollama_reads_is_passed_and_metered_as_it_answered(
    sqlite_gateway: Gateway, keep_alive: Any, reason: str
) -> None:
    client = ollama.Client(host=sqlite_gateway.url)
    assert client.generate(model="mistral:7b", keep_alive=keep_alive).done_reason == reason
    (span,) = spans(sqlite_gateway)
    assert (span.status, span.done_reason, span.input_tokens, span.token_source) == (
        "ok",
        reason,
        0,
        "reported",
    )


def test_a_keep_alive_ollama_cannot_read_is_its_400_relayed(sqlite_gateway: Gateway) -> None:
    client = ollama.Client(host=sqlite_gateway.url)
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="mistral:7b", messages=WEATHER_QUESTION, keep_alive="5")
    assert (refused.value.status_code, refused.value.error) == (
        400,
        'time: missing unit in duration "5"',
    )
    (span,) = spans(sqlite_gateway)
    assert (span.status, span.http_status, span.error_type) == ("error", 400, "bad_request")
    assert span.input_tokens == 0 and span.cost_total == 0


def test_embed_dimensions_and_truncate_reach_ollama_and_the_span_counts_what_it_embedded(
    sqlite_gateway: Gateway,
) -> None:
    """``dimensions`` and ``truncate`` go to Ollama as sent; an input cut to the model's
    context counts the tokens Ollama embedded, and one refused (``truncate: false``) is
    Ollama's 400, relayed."""
    client = ollama.Client(host=sqlite_gateway.url)
    context = next(m for m in DEFAULT_MODELS if m.embedding).context_length
    long = " ".join(f"w{i}" for i in range(context + 5))
    cut = client.embed(model="nomic-embed-text", input=[long, "two words"], dimensions=8)
    assert [len(v) for v in cut.embeddings] == [8, 8]
    assert list(cut.embeddings[1]) == expected_embedding(
        "nomic-embed-text", "two words", dimensions=8
    )
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="nomic-embed-text", input=long, truncate=False)
    assert refused.value.status_code == 400
    failed, embedded = spans(sqlite_gateway)
    assert (embedded.input_tokens, embedded.token_source) == (context + 2, "reported")
    assert (failed.status, failed.http_status) == ("error", 400)


def test_every_documented_field_and_any_unknown_one_reaches_ollama_as_sent(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    """The gateway forwards the body it checked, untouched: documented fields (a JSON schema
    ``format``, ``think`` levels, ``logprobs``, images, ``raw``, ``suffix``, ``context``) and
    fields no version of it knows yet."""
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    future = {"some_future_field": {"nested": [1, 2.5, None, "é"]}, "shift": False}
    bodies = {
        "/api/chat": {
            "model": "llama3.1:8b",
            "messages": [{"role": "user", "content": "hi", "images": ["iVBORw0KGgo="]}],
            "format": schema,
            "options": {"temperature": 0, "seed": 42, "mirostat": 1, "unknown_option": 3},
            "keep_alive": "10m",
            "think": False,
            "tools": WEATHER_TOOLS,
            "logprobs": True,
            "top_logprobs": 3,
            "stream": False,
            **future,
        },
        "/api/generate": {
            "model": "mistral:7b",
            "prompt": "def gcd(a, b):",
            "suffix": "    return a",
            "context": [1, 2, 3],
            "raw": False,
            "format": "json",
            "images": ["iVBORw0KGgo="],
            "keep_alive": -1,
            "stream": False,
            **future,
        },
        "/api/embed": {
            "model": "nomic-embed-text",
            "input": ["a", "b"],
            "truncate": True,
            "dimensions": 16,
            "keep_alive": 0,
            **future,
        },
    }
    for path, body in bodies.items():
        answer = sqlite_gateway.client.post(path, json=body)
        assert answer.status_code == 200, answer.text
        assert emulator.requests_to(path)[-1].body == body
