"""``/v1/responses`` before a lying or broken upstream: the client gets the answer its span says.

A Responses stream is server-sent events whose data say their ``type``; it has no
``[DONE]``, and ends with its terminal event (``response.completed`` or
``response.incomplete``, which carry the usage; ``response.failed``). Hypothesis
scripts the upstream's events byte for byte, and checks what the client read and the
one span the call left.
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
ENDS = ("response.completed", "response.incomplete")
models = itertools.count()  # each example its own model: no circuit opens across examples


def event(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: an ``event:`` line beside the data, as Ollama writes them."""
    if isinstance(data, str):
        return f"data: {data}\n\n".encode()
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def delta(text: str) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "delta": text, "item_id": "msg_1"}


def ending(kind: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    status = {"response.completed": "completed", "response.incomplete": "incomplete"}
    response: dict[str, Any] = {"object": "response", "model": "m", "usage": usage}
    response["status"] = status.get(kind, "failed")
    return {"type": kind, "response": response}


counts = st.one_of(
    st.integers(1, 10**6),
    st.sampled_from([0, -1, 2**63, 2**70, 1.5, "7", None, True]),
)
usages = st.none() | st.fixed_dictionaries({"input_tokens": counts, "output_tokens": counts})
items = st.one_of(
    st.builds(delta, st.text("ab ", min_size=1, max_size=6)),
    st.builds(ending, st.sampled_from([*ENDS, "response.failed"]), usages),
    st.sampled_from(["[DONE]", "{not json", ": keep-alive", "event: response.completed"]),
    st.just({"type": "error", "message": "the model ran out of memory"}),
)


def answer(events: list[Any]) -> bytes:
    """A 200 carrying ``events``: objects and data as events, other lines (a comment, an
    ``event:`` line without data) as they are."""
    raw = (
        e.encode() + b"\n\n" if isinstance(e, str) and e.startswith((":", "event:")) else event(e)
        for e in events
    )
    body = b"".join(raw)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


MOST = 2**31 - 1
"""The most tokens a span stores: a count past it (a server that lies) is stored as it."""


def counted(count: object) -> int | None:
    """A count as the span keeps it: a positive integer (at most MOST), else None (estimated)."""
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return min(count, MOST)
    return None


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(items, max_size=6))
@example(events=[delta("hi"), "[DONE]"])  # was "ok": the client stopped at [DONE], unended
@example(events=[delta("hi"), "[DONE]", ending("response.completed", None)])
@example(events=[delta("a"), delta("b"), ending("response.completed", {"input_tokens": 6, "output_tokens": 1})])  # fmt: skip
@example(events=[delta("hi"), ending("response.completed", {"input_tokens": 6, "output_tokens": 900_000})])  # fmt: skip
def test_a_lying_responses_stream_gives_the_client_what_its_span_says(
    upstream: tuple[Gateway, Any], events: list[Any]
) -> None:
    gw, server = upstream
    server.body = answer(events)
    body = {"model": f"m{next(models)}", "input": ASKED, "stream": True}
    before = gw.ledger.count()
    reply = gw.client.post("/v1/responses", json=body)
    assert reply.status_code == 200
    assert gw.ledger.count() == before + 1
    data = [
        line.removeprefix("data: ")
        for frame in reply.text.split("\n\n")
        for line in frame.split("\n")
        if line.startswith("data: ")
    ]
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert "[DONE]" not in data  # the Responses API has none: a client stops reading at it
    last = json.loads(data[-1]) if data else {}
    if span.status == "ok":
        assert last.get("type") in ENDS  # the client has the answer's end, usage and all
        usage = last["response"]["usage"] or {}
        given = counted(usage.get("input_tokens")), counted(usage.get("output_tokens"))
        cut = given[0] is not None and given[0] > PROMPT_MOST  # no honest server counts more
        as_said = None not in given and not cut and span.output_tokens == given[1]
        assert span.token_source == ("reported" if as_said else "estimated")
        assert span.input_tokens == min(given[0] or 6, PROMPT_MOST)
        # As reported; more for a stream of more pieces; less past what the answer could hold.
        assert reply_charged(given[1], span.output_tokens, len(events))
    else:
        assert (span.status, span.error_type) == ("error", "stream_error")
        assert last.get("error") or last.get("type") in ("error", "response.failed"), data
        if len(data) > 1:  # the upstream's answer had begun: its prompt was run
            assert (span.token_source, span.input_tokens) == ("estimated", 6)
    assert span.cost_total == span.input_tokens * 1000 + span.output_tokens * 2000
