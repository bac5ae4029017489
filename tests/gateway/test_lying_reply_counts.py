"""A reply count no honest Ollama gives for what its answer showed is charged as the most it
could be.

Ollama's final chunk said ``eval_count`` = 2**31 - 1 for a reply of a few words, and the call
was charged 2 billion reply tokens (4,295 USD at 2,000 USD per 1M). A model generates a token
a byte at most of what the answer shows (its text, its thinking, its tool calls, each
character of the last two 4 bytes at most), and besides those only a few tokens Ollama does
not show (the end-of-sequence token, stripped markers, a stop sequence: ``MAX_HIDDEN_REPLY``).
The call is charged that most, says ``estimated``, and a warning names the count it did not
believe. An honest count, however long the answer, is charged as reported.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import Attribution, Opening
from ollama_meter.meter._honest import MAX_HIDDEN_REPLY, UTF8_MOST
from ollama_meter.meter._request import RequestFacts
from ollama_meter.testing import Fault, OllamaEmulator
from ollama_meter.testing._faults import WILD_REPLY
from ollama_meter.upstream import Delta, Final
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

MESSAGES = [{"role": "user", "content": "hello from the crm bot"}]
_departments = itertools.count()


def _events(body: bytes) -> list[dict[str, Any]]:
    """The data of a stream's server-sent events."""
    lines = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: {")]
    return [json.loads(line) for line in lines]


def _shown(route: str, stream: bool, body: bytes) -> int:
    """The bytes of reply text the client got (the emulated model neither thinks nor calls)."""
    if route == "/v1/responses":
        if stream:
            texts = [e["delta"] for e in _events(body) if e["type"].endswith("text.delta")]
        else:
            texts = [p["text"] for o in json.loads(body)["output"] for p in o["content"]]
    elif route == "/v1/messages":
        if stream:
            texts = [e["delta"]["text"] for e in _events(body) if "delta" in e and "text" in e["delta"]]  # fmt: skip
        else:
            texts = [block["text"] for block in json.loads(body)["content"] or []]
    elif route.startswith("/v1"):
        objs = _events(body) if stream else [json.loads(body)]
        key = "delta" if stream else "message"
        texts = [c.get("text") or c.get(key, {}).get("content") or "" for o in objs for c in o["choices"]]  # fmt: skip
    else:
        objs = [json.loads(line) for line in body.splitlines() if line.strip()]
        texts = [o["message"]["content"] if route == "/api/chat" else o["response"] for o in objs]
    return len("".join(texts).encode())


ROUTES = [
    "/api/chat",
    "/api/generate",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
]


def _request(route: str, stream: bool) -> dict[str, Any]:
    """A request for a short answer, in ``route``'s wire format."""
    body: dict[str, Any] = {"model": "llama3.1:8b", "stream": stream}
    if route in ("/api/generate", "/v1/completions"):
        body["prompt"] = MESSAGES[0]["content"]
    elif route == "/v1/responses":
        body["input"] = MESSAGES[0]["content"]
    else:
        body["messages"] = MESSAGES
    if route == "/v1/messages":
        body["max_tokens"] = 1000  # the Messages API requires a cap
    if route in ("/v1/chat/completions", "/v1/completions") and stream:
        body["stream_options"] = {"include_usage": True}
    return body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("route", ROUTES)
def test_a_wild_reply_count_through_the_gateway_is_charged_the_most_the_answer_shows(
    sqlite_app: Gateway,
    emulator: OllamaEmulator,
    route: str,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqlite_app.ledger.add_price_rule(token_prices())  # 2,000 micro-USD a reply token
    emulator.inject(Fault.INFLATE_REPLY)  # reports 2**31 - 1 reply tokens
    department = f"d{next(_departments)}"
    body = _request(route, stream)
    headers = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": department}
    with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
        answer = sqlite_app.client.post(route, json=body, headers=headers)
        sqlite_app.settle()
    assert answer.status_code == 200, answer.text
    shown = _shown(route, stream, answer.content)
    assert 0 < shown < 1000
    (span,) = sqlite_app.ledger.latest(SpanFilter(department=department), 5)
    most = shown + MAX_HIDDEN_REPLY
    assert (span.output_tokens, span.token_source) == (most, "estimated")
    assert span.cost_tokens == span.input_tokens * 1000 + most * 2000
    assert f"reported {WILD_REPLY} reply tokens for an answer that shows {shown} bytes" in (
        caplog.text
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_wild_reply_count_through_the_python_api_is_charged_the_most_the_answer_shows(
    emulator: OllamaEmulator, sqlite_url: str, stream: bool
) -> None:
    emulator.inject(Fault.INFLATE_REPLY)
    with MeteredClient(emulator.url, db_url=sqlite_url, department="sales") as client:
        client.meter.ledger.add_price_rule(token_prices())
        if stream:
            chunks = list(client.chat("llama3.1:8b", MESSAGES, stream=True))
            text = "".join(chunk.message.content or "" for chunk in chunks)
            said = chunks[-1].eval_count
        else:
            answer = client.chat("llama3.1:8b", MESSAGES)
            text, said = answer.message.content or "", answer.eval_count
        (span,) = client.meter.ledger.latest(SpanFilter(department="sales"), 5)
    assert said == WILD_REPLY  # the client sees what Ollama said; the ledger, what it may be
    most = len(text.encode()) + MAX_HIDDEN_REPLY
    assert (span.output_tokens, span.token_source) == (most, "estimated")
    assert span.cost_tokens == span.input_tokens * 1000 + most * 2000


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pieces=st.lists(
        st.tuples(st.text(max_size=40), st.integers(0, 200), st.integers(0, 200)), max_size=8
    ),
    stream=st.booleans(),
    over=st.integers(-(2**31), 2**31),
)
def test_an_honest_reply_count_is_charged_as_reported_and_no_more_than_the_answer_shows(
    sqlite_app: Gateway,
    pieces: list[tuple[str, int, int]],
    stream: bool,
    over: int,
) -> None:
    """Any answer (text in any script, thinking, tool calls, streamed or whole): a reply count
    up to the bytes it shows and ``MAX_HIDDEN_REPLY`` is charged exactly as reported; one
    past it, that most, ``estimated``."""
    facts = RequestFacts(prompt_text="hi", prompt_bytes=2, messages=1)
    opening = Opening("chat", "llama3.1:8b", stream, Attribution("acme", "prop"), facts)
    call = sqlite_app.meter.open(opening)
    shown = 0
    for text, thought, calls in pieces:
        call.observe(Delta(text, bool(thought or calls), thought + calls, calls))
        shown += len(text.encode("utf-8", "surrogatepass")) + UTF8_MOST * (thought + calls)
    most = shown + MAX_HIDDEN_REPLY
    generated = sum(1 for text, thought, calls in pieces if text or thought or calls)
    said = max(most + over, generated if stream else 0)  # a stream: a token a piece at least
    call.observe(Final(input_tokens=3, output_tokens=said, done_reason="stop"))
    span = sqlite_app.meter.close(call)
    if said <= most:
        assert (span.output_tokens, span.token_source) == (said, "reported")
    else:
        assert (span.output_tokens, span.token_source) == (most, "estimated")


def test_a_call_opened_without_its_request_is_charged_the_reply_as_reported(
    sqlite_app: Gateway,
) -> None:
    """A library caller's own ``Opening`` may observe the usage alone: it bounds nothing."""
    opening = Opening("chat", "llama3.1:8b", False, Attribution("acme", "library"))
    call = sqlite_app.meter.open(opening)
    call.observe(Final(input_tokens=3, output_tokens=100_000, done_reason="stop"))
    span = sqlite_app.meter.close(call)
    assert (span.output_tokens, span.token_source) == (100_000, "reported")
