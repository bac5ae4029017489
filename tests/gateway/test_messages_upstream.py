"""``/v1/messages`` before a lying or broken upstream: the client gets the answer its span says.

A Messages stream is server-sent events whose data say their ``type``; it has no
``[DONE]``. Its counts come in ``message_start`` (Ollama's input count there is a guess
from the request's length) and ``message_delta`` (the counts taken, which win), and
``message_stop`` ends it. Hypothesis scripts the upstream's events byte for byte, and
checks what the client read and the one span the call left.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets._estimate import MAX_HIDDEN_PROMPT, MESSAGE_TOKENS, TEMPLATE_TOKENS
from ollama_meter.ledger import SpanFilter
from tests._counts import reply_charged
from tests.gateway.conftest import Gateway

ASKED = "hello from the crm bot"
PROMPT_MOST = len(ASKED) + MESSAGE_TOKENS + TEMPLATE_TOKENS + MAX_HIDDEN_PROMPT
"""The most prompt tokens an honest server counts of the request (``_honest.prompt_at_most``)."""
"""Five words, 22 characters: 6 tokens estimated."""
STOP = {"type": "message_stop"}
models = itertools.count()  # each example its own model: no circuit opens across examples


def event(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: an ``event:`` line beside the data, as Ollama writes them."""
    if isinstance(data, str):
        return f"data: {data}\n\n".encode()
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def text(piece: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": piece},
    }


def start(usage: dict[str, Any]) -> dict[str, Any]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m"}
    return {"type": "message_start", "message": {**message, "content": [], "usage": usage}}


def delta(usage: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}


counts = st.one_of(
    st.integers(1, 10**6),
    st.sampled_from([0, -1, 2**63, 2**70, 1.5, "7", None, True]),
)
usages = st.dictionaries(st.sampled_from(["input_tokens", "output_tokens"]), counts)
items = st.one_of(
    st.builds(text, st.text("ab ", min_size=1, max_size=6)),
    st.builds(start, usages),
    st.builds(delta, usages),
    st.just(STOP),
    st.sampled_from(["[DONE]", "{not json", ": keep-alive", "event: message_stop"]),
    st.just({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
)


def answer(events: list[Any]) -> bytes:
    raw = (
        e.encode() + b"\n\n" if isinstance(e, str) and e.startswith((":", "event:")) else event(e)
        for e in events
    )
    body = b"".join(raw)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


MOST = 2**31 - 1


def counted(count: object) -> int | None:
    """A count as the span keeps it: a positive integer (at most MOST), else None (estimated)."""
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return min(count, MOST)
    return None


def last_said(relayed: list[dict[str, Any]], key: str) -> object:
    """The count the last usage to name ``key`` said (message_start's or message_delta's)."""
    said: object = None
    for obj in relayed:
        usage = (obj.get("message") or {}).get("usage") or obj.get("usage") or {}
        if obj.get("type") in ("message_start", "message_delta") and key in usage:
            said = usage[key]
    return said


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(items, max_size=7))
@example(events=[start({"input_tokens": 99}), text("hi"), "[DONE]"])
@example(events=[start({"input_tokens": 99}), text("hi"), delta({"input_tokens": 0}), STOP])
@example(events=[start({"input_tokens": 5}), delta({"input_tokens": 11, "output_tokens": 3}), STOP])
@example(events=[start({"input_tokens": 5}), text("hi"), delta({"output_tokens": 900_000}), STOP])
def test_a_lying_messages_stream_gives_the_client_what_its_span_says(
    upstream: tuple[Gateway, Any], events: list[Any]
) -> None:
    gw, server = upstream
    server.body = answer(events)
    body = {"model": f"m{next(models)}", "max_tokens": 100, "messages": [{"role": "user", "content": ASKED}], "stream": True}  # fmt: skip
    before = gw.ledger.count()
    reply = gw.client.post("/v1/messages", json=body)
    assert reply.status_code == 200
    assert gw.ledger.count() == before + 1
    data = [
        line.removeprefix("data: ")
        for frame in reply.text.split("\n\n")
        for line in frame.split("\n")
        if line.startswith("data: ")
    ]
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert "[DONE]" not in data  # the Messages API has none
    relayed = [json.loads(d) for d in data]
    last = relayed[-1] if relayed else {}
    if span.status == "ok":
        assert last == STOP  # the client has the answer's end, and nothing after it
        given = (
            counted(last_said(relayed, "input_tokens")),
            counted(last_said(relayed, "output_tokens")),
        )
        cut = given[0] is not None and given[0] > PROMPT_MOST  # no honest server counts more
        as_said = None not in given and not cut and span.output_tokens == given[1]
        assert span.token_source == ("reported" if as_said else "estimated")
        assert span.input_tokens == min(given[0] or 6, PROMPT_MOST)
        # As reported; more for a stream of more pieces; less past what the answer could hold.
        assert reply_charged(given[1], span.output_tokens, len(events))
    else:
        assert (span.status, span.error_type) == ("error", "stream_error")
        assert last.get("type") == "error" and set(last["error"]) == {"type", "message"}, data
        assert reply.text.rstrip("\n").split("\n\n")[-1].startswith("event: error")
    assert span.cost_total == span.input_tokens * 1000 + span.output_tokens * 2000
