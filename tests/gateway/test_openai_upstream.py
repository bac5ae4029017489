"""``/v1/chat/completions`` and ``/v1/completions`` before a lying or broken upstream: the
client gets what its span says.

A chat (or text) completion stream is server-sent ``data:`` events ending in ``data: [DONE]``; its
counts come in a ``usage`` (a chunk of its own, when ``stream_options.include_usage``
asks, which the gateway asks for on a client's behalf and then does not relay).
Hypothesis scripts the upstream's events byte for byte (usage missing, zero, negative, a
string, huge, twice; ``[DONE]`` missing or twice; lines that are not JSON; an error
event), has the official ``openai`` client read the answer, and checks what it read
against the one span the call left.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import openai
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from tests._counts import prompt_charged, reply_charged
from tests.gateway.conftest import Gateway

ASKED = "hello from the crm bot"
"""Five words, 22 characters: 6 tokens estimated."""
DONE = "[DONE]"
models = itertools.count()  # each example its own model: no circuit opens across examples


def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": reason}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}  # fmt: skip


def text(piece: str) -> dict[str, Any]:
    return chunk({"role": "assistant", "content": piece})


def call_piece(arguments: str) -> dict[str, Any]:
    """A piece of a tool call, as a stream sends one in parts."""
    call = {"index": 0, "id": "call_1", "type": "function"}
    return chunk({"tool_calls": [{**call, "function": {"name": "f", "arguments": arguments}}]})


def completion(piece: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A text completion's chunk; Ollama writes a zero usage into each when usage is asked for."""
    choice = {"text": piece, "index": 0, "finish_reason": None}
    written = {"id": "c1", "object": "text_completion", "created": 1, "choices": [choice], "model": "m"}  # fmt: skip
    return written if usage is None else {**written, "usage": usage}


def usage_only(usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": usage}  # fmt: skip


def with_usage(piece: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {**text(piece), "usage": usage}


counts = st.one_of(
    st.integers(1, 10**6),
    st.sampled_from([0, -1, 2**63, 2**70, 1.5, "7", None, True]),
)
usages = st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens"]), counts)
NOT_UTF8 = b": keep-alive \xff\xfe"
"""A comment (no data) in bytes that are not UTF-8: the official client decodes every line
strictly, so it raises on it, where it skips a comment it can read."""
items = st.one_of(
    st.builds(text, st.text("ab ", min_size=1, max_size=6)),
    st.builds(call_piece, st.sampled_from(['{"a":', "1}", ""])),
    st.just(chunk({}, "stop")),
    st.builds(usage_only, usages),
    st.builds(with_usage, st.text("ab", min_size=1, max_size=3), usages),
    st.sampled_from([DONE, "{not json", ": keep-alive", "[1, 2]", NOT_UTF8]),
    st.just({"error": {"message": "the model ran out of memory", "type": "api_error"}}),
)

completion_items = st.one_of(
    st.builds(completion, st.text("ab ", min_size=1, max_size=6)),
    st.builds(completion, st.text("ab", min_size=1, max_size=3), usages),
    st.builds(usage_only, usages),
    st.sampled_from([DONE, "{not json", ": keep-alive", NOT_UTF8]),
    st.just({"error": {"message": "the model ran out of memory", "type": "api_error"}}),
)


def answer(events: list[Any]) -> bytes:
    """A 200 carrying ``events`` as ``data:`` events (a comment as it is)."""
    raw = (
        e if isinstance(e, bytes) else
        ((e if e.startswith(":") else f"data: {e}") if isinstance(e, str) else f"data: {json.dumps(e)}").encode()
        for e in events
    )  # fmt: skip
    body = b"".join(line + b"\n\n" for line in raw)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


MOST = 2**31 - 1
"""The most tokens a span stores: a count past it (a server that lies) is stored as it."""


def counted(count: object) -> int | None:
    """A count as the span keeps it: a positive integer (at most MOST), else None (estimated)."""
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return min(count, MOST)
    return None


def last_usage(events: list[Any]) -> dict[str, Any] | None:
    """The last non-empty usage the upstream sent before its first ``[DONE]``."""
    said = None
    for e in events:
        if e == DONE:
            break
        if isinstance(e, dict) and isinstance(e.get("usage"), dict) and e["usage"]:
            said = e["usage"]
    return said


def check(gw: Gateway, events: list[Any], asked: bool, create: Callable[..., Any]) -> None:
    """Have the official client read the scripted ``events`` through the gateway (``create``:
    the client's call); what it read, and whether it raised, must be what the span says."""
    read: list[Any] = []
    raised: Exception | None = None
    before = gw.ledger.count()
    try:
        stream = create(
            model=f"m{next(models)}",
            stream=True,
            **({"stream_options": {"include_usage": True}} if asked else {}),
        )
        read.extend(stream)
    except openai.APIError as exc:
        raised = exc
    assert gw.ledger.count() == before + 1
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    shown = [c.usage.to_dict(warnings=False) for c in read if c.usage is not None]
    if not asked:
        assert shown == []  # the usage the gateway asked for is not the client's to see
    if span.status == "ok":
        assert raised is None, raised
        said = last_usage(events)
        given = (None, None) if said is None else (
            counted(said.get("prompt_tokens")), counted(said.get("completion_tokens"))
        )  # fmt: skip
        sent = events[: events.index(DONE)] if DONE in events else events
        # Believed only as said: a count past what the request could hold is cut, and estimated
        reported = None not in given and (span.input_tokens, span.output_tokens) == given
        assert span.token_source == ("reported" if reported else "estimated")
        assert prompt_charged(given[0], span.input_tokens, 6)
        # As reported; more only for a stream of more pieces than that (Ollama streams about a
        # token a piece: the pieces are charged, as estimated); less past what it could hold.
        assert reply_charged(given[1], span.output_tokens, len(sent))
        if asked and said is not None:
            assert [u for u in shown if u][-1] == said  # as Ollama wrote it
    else:
        assert (span.status, span.error_type) == ("error", "stream_error"), span
        assert isinstance(raised, openai.APIError), read  # the client raises, as before Ollama
    assert span.cost_total == span.input_tokens * 1000 + span.output_tokens * 2000


def client_of(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="not-a-key", base_url=f"{gw.url}/v1", http_client=gw.client, max_retries=0
    )


SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(events=st.lists(items, max_size=7), asked=st.booleans())
@example(events=[usage_only({"prompt_tokens": 32831, "completion_tokens": 1}), DONE], asked=False)
@example(events=[text("hi"), usage_only({"prompt_tokens": 9, "completion_tokens": 2}), DONE, DONE], asked=False)  # fmt: skip
@example(events=[with_usage("hi", {"prompt_tokens": -1, "completion_tokens": "7"}), DONE], asked=True)  # fmt: skip
@example(events=[call_piece('{"a":'), call_piece("1}"), chunk({}, "tool_calls"), DONE], asked=False)  # fmt: skip
@example(events=[NOT_UTF8, text("hi"), chunk({}, "stop"), DONE], asked=False)
@example(events=[text("a"), with_usage("a", {"prompt_tokens": 1, "completion_tokens": 1}), DONE], asked=False)  # fmt: skip
@example(events=[text("hi"), usage_only({"prompt_tokens": 9, "completion_tokens": 900_000}), DONE], asked=False)  # fmt: skip
def test_a_lying_chat_stream_gives_the_official_client_what_its_span_says(
    upstream: tuple[Gateway, Any], events: list[Any], asked: bool
) -> None:
    gw, server = upstream
    server.body = answer(events)
    messages = [{"role": "user", "content": ASKED}]
    check(
        gw,
        events,
        asked,
        lambda **kw: client_of(gw).chat.completions.create(messages=messages, **kw),
    )


ZERO = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@SETTINGS
@given(events=st.lists(completion_items, max_size=7), asked=st.booleans())
@example(events=[completion("hi", ZERO), usage_only({"prompt_tokens": 9, "completion_tokens": 2}), DONE], asked=False)  # fmt: skip
@example(events=[completion("hi", ZERO), DONE], asked=True)
def test_a_lying_completion_stream_gives_the_official_client_what_its_span_says(
    upstream: tuple[Gateway, Any], events: list[Any], asked: bool
) -> None:
    gw, server = upstream
    server.body = answer(events)
    check(gw, events, asked, lambda **kw: client_of(gw).completions.create(prompt=ASKED, **kw))
