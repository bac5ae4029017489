"""The gateway meters the request Ollama reads, and charges only what Ollama answered.

A held-out attack found the gateway and Ollama reading one body two ways: a reply cap
in a field Ollama ignores (``max_completion_tokens``), or a field spelled in another
case (Go's decoder matches ``Prompt``, or ``stream`` with a long s, to ``prompt`` and ``stream``),
let a call be admitted under a hard budget on a bound Ollama never saw. And an
upstream answering 201, 302 or a 200 that is not an answer was relayed as it came,
the call charged as ``ok`` on estimates or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.gateway._requests import OLLAMA_ROUTES, OPENAI_ROUTES
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import DEFAULT_MODELS, Fault, OllamaEmulator
from tests._counts import prompt_charged, reply_charged
from tests._raw_http import answering
from tests.factories import quick_history, token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hello from the crm bot"}]
SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
GENERATING = {
    "/api/chat": {"messages": HI},
    "/api/generate": {"prompt": "hello"},
    "/v1/chat/completions": {"messages": HI},
    "/v1/completions": {"prompt": "hello"},
    "/v1/responses": {"input": "hello"},
    "/v1/messages": {"messages": HI, "max_tokens": 4096},  # Ollama requires its cap there
}
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def last_span(gw: Gateway) -> Any:
    return gw.ledger.latest(SpanFilter(), 1)[0]


def error_text(reply: Any, path: str) -> str:
    error = reply.json()["error"]
    if path == "/v1/messages":  # Anthropic's error object
        assert (reply.json()["type"], set(error)) == ("error", {"type", "message"})
        return str(error["message"])
    if path.startswith("/v1/"):
        assert set(error) == {"message", "type", "param", "code"}
        return str(error["message"])
    assert isinstance(error, str)
    return error


@pytest.fixture
def budgeted(app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    """An in-process gateway where acme/sales has a hard budget far above any one call."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    return gw


caps = st.none() | st.integers(-3, 40) | st.floats(-3, 40, allow_nan=False)


def cap_sent(path: str, body: dict[str, Any]) -> Any:
    """The reply cap in the field Ollama honours on ``path``."""
    if path == "/v1/responses":
        return body["max_output_tokens"]
    return body["max_tokens"] if path.startswith("/v1/") else body["options"]["num_predict"]


@EXAMPLES
@given(
    path=st.sampled_from(sorted(GENERATING)),
    num_predict=caps,
    max_tokens=st.none() | st.integers(1, 40),
    max_completion_tokens=st.none() | st.integers(1, 40),
    stream=st.booleans(),
)
def test_under_a_hard_budget_ollama_gets_the_cap_the_call_was_admitted_on(
    budgeted: Gateway,
    emulator: OllamaEmulator,
    path: str,
    num_predict: float | None,
    max_tokens: int | None,
    max_completion_tokens: int | None,
    stream: bool,
) -> None:
    """Whatever field the caller capped the reply in, Ollama receives the cap in the field
    it honours (``options.num_predict``, ``max_tokens``, ``max_output_tokens``), no larger than any cap the caller
    set, and the reply is no longer."""
    body: dict[str, Any] = {"model": "llama3.1:8b", "stream": stream, **GENERATING[path]}
    given_caps: list[int] = []
    if path == "/v1/responses":  # its one cap field (Ollama ignores max_tokens there)
        if max_tokens is not None:
            body["max_output_tokens"] = max_tokens
            given_caps.append(max_tokens)
    elif path == "/v1/messages":  # its one cap field (always there: Ollama requires it)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
            given_caps.append(max_tokens)
    elif path.startswith("/v1/"):
        for field, value in (("max_tokens", max_tokens), ("max_completion_tokens", max_completion_tokens)):  # fmt: skip
            if value is not None:
                body[field] = value
                given_caps.append(value)
    elif num_predict is not None:
        body["options"] = {"num_predict": num_predict}
        if isinstance(num_predict, int) and num_predict > 0:
            given_caps.append(num_predict)
    before = len(emulator.calls)
    reply = budgeted.client.post(path, json=body, headers=SALES)
    assert reply.status_code == 200, reply.text
    sent = emulator.calls[before:]
    assert len(sent) == 1
    received = sent[0].body
    cap = cap_sent(path, received)
    assert isinstance(cap, int) and not isinstance(cap, bool) and cap > 0
    assert all(cap <= given for given in given_caps), (body, received)
    assert last_span(budgeted).output_tokens <= cap


def streamed_items(text: str, path: str) -> list[dict[str, Any]]:
    """The items of a streamed answer, NDJSON or server-sent events, in order."""
    if path.startswith("/v1/"):  # an event's data line (beside its event: line, if any)
        events = [event.split("\n") for event in text.split("\n\n") if event]
        data = [line[6:] for lines in events for line in lines if line.startswith("data: ")]
        return [json.loads(line) for line in data if line != "[DONE]"]
    return [json.loads(line) for line in text.splitlines() if line]


def reply_text(item: dict[str, Any]) -> str:
    if "sequence_number" in item:  # a Responses API event: only its text deltas are text
        return str(item["delta"]) if item["type"] == "response.output_text.delta" else ""
    if item.get("type") == "content_block_delta":  # a Messages API event
        return str(item["delta"].get("text") or "")
    if "choices" in item:
        choice = item["choices"][0] if item["choices"] else {}
        return str(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return str(item.get("response") or (item.get("message") or {}).get("content") or "")


@EXAMPLES
@given(path=st.sampled_from(sorted(GENERATING)), cap=st.integers(1, 7))
def test_a_server_that_streams_past_the_cap_is_cut_there_and_the_budget_holds(
    budgeted: Gateway, emulator: OllamaEmulator, path: str, cap: int
) -> None:
    """An Ollama-compatible server that ignores ``num_predict`` (``max_tokens``) would spend
    past a hard budget for as long as it kept streaming: the gateway stops it at the cap."""
    body: dict[str, Any] = {"model": "llama3.1:8b", "stream": True, **GENERATING[path]}
    if path == "/v1/responses":
        body["max_output_tokens"] = cap
    elif path.startswith("/v1/"):
        body["max_tokens"] = cap
    else:
        body["options"] = {"num_predict": cap}
    emulator.inject(Fault.IGNORE_CAP)  # the reply is 8 to 40 tokens long, whatever the cap
    reply = budgeted.client.post(path, json=body, headers=SALES)
    assert reply.status_code == 200
    *items, last = streamed_items(reply.text, path)
    assert len([item for item in items if reply_text(item)]) == cap  # never the one past it
    assert "streamed more than the" in json.dumps(last["error"])
    span = last_span(budgeted)
    assert (span.status, span.error_type, span.token_source) == ("error", "over_cap", "estimated")
    # What Ollama honouring the cap would have billed: the piece past it was never relayed
    assert span.output_tokens == cap


def other_spellings(name: str) -> list[str]:
    """``name`` as Go's decoder would still match it: other cases, long s, Kelvin sign."""
    spellings = {name.upper(), name.capitalize(), name.swapcase(), name.title()}
    spellings |= {name.replace("s", "\u017f", 1), name.replace("k", "\u212a", 1)}
    return sorted(spellings - {name})


ROUTES = {**OLLAMA_ROUTES, **OPENAI_ROUTES}
VALID: dict[str, dict[str, Any]] = {
    **GENERATING,
    "/api/embed": {"input": "hello"},
    "/api/embeddings": {"prompt": "hello"},
    "/v1/embeddings": {"input": "hello"},
}


@st.composite
def misspelled(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    """A valid body with one key that is a field's name spelled another way, at any depth."""
    path = draw(st.sampled_from(sorted(ROUTES)))
    model = "nomic-embed-text" if "embed" in path else "llama3.1:8b"
    body: dict[str, Any] = {"model": model, **VALID[path]}
    where = draw(st.sampled_from(["body", "message", "stream_options", "tool_call"]))
    if where == "message" and path == "/v1/responses":  # in an input item, as Go reads it too
        key = draw(st.sampled_from(other_spellings(draw(st.sampled_from(["role", "content"])))))
        body["input"] = [{"role": "user", "content": "hi", key: "a much longer prompt " * 50}]
    elif where == "message" and "messages" in body:
        message = {"role": "user", "content": "hi"}
        key = draw(st.sampled_from(other_spellings(draw(st.sampled_from(sorted(message))))))
        body["messages"] = [{**message, key: "a much longer prompt " * 50}]
    elif where == "tool_call" and path in ("/api/chat", "/v1/chat/completions"):
        # An earlier call: Go structs too, whose names Ollama may write once per result.
        function: dict[str, Any] = {"name": "lookup", "arguments": {}}
        call: dict[str, Any] = {"function": function}
        if path == "/v1/chat/completions":
            call |= {"id": "c1", "type": "function", "index": 0}
            function["arguments"] = "{}"
        else:
            call["id"], function["index"] = "c1", 0
        part = draw(st.sampled_from([call, function]))
        field = draw(st.sampled_from(sorted(part)))
        key = draw(st.sampled_from(other_spellings(field)))
        part[key] = part.pop(field)
        said = {"role": "assistant", "content": "", "tool_calls": [call]}
        body["messages"] = [{"role": "user", "content": "hi"}, said]
    elif where == "stream_options" and path in ("/v1/chat/completions", "/v1/completions"):
        key = draw(st.sampled_from(other_spellings("include_usage")))
        body |= {"stream": True, "stream_options": {key: True}}
    else:
        field = draw(st.sampled_from(sorted(ROUTES[path].model_fields)))
        key = draw(st.sampled_from(other_spellings(field)))
        body[key] = body.get(field, "x")
    return path, body, key


@EXAMPLES
@given(example=misspelled())
def test_a_field_spelled_another_way_is_refused_not_read_two_ways(
    sqlite_app: Gateway, emulator: OllamaEmulator, example: tuple[str, dict[str, Any], str]
) -> None:
    """Ollama's Go decoder would read ``"Options"`` or ``"PROMPT"`` as the field; the gateway
    must not meter (and a hard budget admit) a request other than the one Ollama runs."""
    path, body, key = example
    before, spans_before = len(emulator.calls), sqlite_app.ledger.count()
    reply = sqlite_app.client.post(path, json=body)
    assert reply.status_code == 400, (body, reply.text)
    assert json.dumps(key) in error_text(reply, path)
    assert len(emulator.calls) == before
    assert sqlite_app.ledger.count() == spans_before + 1
    span = last_span(sqlite_app)
    assert (span.status, span.error_type, span.http_status) == ("error", "bad_request", 400)


@pytest.fixture
def scripted(app_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[tuple[Gateway, Any]]:
    """An in-process gateway in front of an upstream that answers as the test says."""
    with answering() as server:
        yield app_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url), server


def call_with(gw: Gateway, path: str, model: str, stream: bool) -> Any:
    body = {"model": model, "stream": stream, **VALID[path]}
    if "embed" in path:
        body.pop("stream")
    return gw.client.post(path, json=body)


NOT_ANSWERS = st.one_of(
    st.just(b""),
    st.binary(max_size=40).filter(lambda b: not b.strip().startswith((b"{", b"["))),
    st.sampled_from([b"<html>502 Bad Gateway</html>", b"[1, 2]", b'"ok"', b"null", b"true"]),
    st.dictionaries(
        st.text(max_size=8).filter(
            lambda k: (
                k not in {"done", "choices", "data", "output", "content", "embeddings", "embedding"}
            )
        ),
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        max_size=4,
    ).map(lambda d: json.dumps(d).encode()),
    st.just(b'{"model": "m", "response": "hi", "done": false}'),
    # The answer streamed when a whole one was asked for: NDJSON lines, not one object.
    st.just(b'{"model": "m", "response": "hi", "done": false}\n{"model": "m", "done": true}\n'),
)
models = iter(range(10**9))  # each example its own model: no circuit opens across examples


@EXAMPLES
@given(
    path=st.sampled_from(sorted(set(ROUTES) - {"/api/embed", "/api/embeddings"})), body=NOT_ANSWERS
)
def test_a_whole_answer_that_is_not_one_is_a_502_and_an_error_span(
    scripted: tuple[Gateway, Any], path: str, body: bytes
) -> None:
    """A 200 whose body is not the answer asked for (not JSON, not an object, no ``done``,
    no ``choices``...) is not relayed as a success and charged ``ok`` on estimates."""
    gw, server = scripted  # (Ollama's embedding answers are any object: see the next test)
    server.answer = (200, {"content-type": "application/json"}, body)
    reply = call_with(gw, path, f"m{next(models)}", stream=False)
    assert reply.status_code == 502, (body, reply.text)
    said = error_text(reply, path)  # not an object at all, or one that lacks what answers have
    assert "does not read as Ollama's API has it: " in said or "is not an answer: " in said
    span = last_span(gw)
    assert (span.status, span.error_type) == ("error", "stream_error")


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings"])
@pytest.mark.parametrize("body", [b"", b"[]", b"null", b"<html>", b'{"a": 1}\n{"b": 2}'])
def test_an_embedding_answer_that_is_not_an_object_is_a_502(
    scripted: tuple[Gateway, Any], path: str, body: bytes
) -> None:
    gw, server = scripted
    server.answer = (200, {"content-type": "application/json"}, body)
    reply = call_with(gw, path, f"m{next(models)}", stream=False)
    assert reply.status_code == 502 and "not a JSON object" in error_text(reply, path)
    assert last_span(gw).status == "error"


@EXAMPLES
@given(
    path=st.sampled_from(sorted(ROUTES)),
    status=st.sampled_from([201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 307, 308]),
    stream=st.booleans(),
)
def test_a_redirect_or_another_success_from_ollama_is_a_502_never_relayed(
    scripted: tuple[Gateway, Any], path: str, status: int, stream: bool
) -> None:
    """Only a 200 is an answer: a 201 relayed as it came handed the client its reply on an
    ``error`` span that charged nothing, and a 302 lost its Location on the way."""
    gw, server = scripted
    answer = json.dumps({"model": "m", "response": "free", "done": True}).encode()
    server.answer = (status, {"content-type": "application/json", "location": "/x"}, answer)
    reply = call_with(gw, path, f"m{next(models)}", stream)
    assert reply.status_code == 502, reply.text
    assert f"answered HTTP {status}" in error_text(reply, path)
    span = last_span(gw)
    assert (span.status, span.http_status) == ("error", status)


def chunk(path: str, text: str) -> dict[str, Any]:
    if path == "/api/chat":
        return {"model": "m", "message": {"role": "assistant", "content": text}, "done": False}
    return {"model": "m", "response": text, "done": False}


@st.composite
def lying_stream(draw: st.DrawFn) -> tuple[str, bytes, dict[str, Any] | None, bool]:
    """An NDJSON answer Ollama would send, then lied about: a line that is not a JSON object
    before the end, no final chunk, things after it, no newline after the last line.

    Returns the route, the bytes, the final chunk (None if missing) and whether a
    malformed line comes before it.
    """
    path = draw(st.sampled_from(["/api/chat", "/api/generate"]))
    texts = draw(st.lists(st.text(min_size=1, max_size=5), max_size=4))
    lines = [json.dumps(chunk(path, text)) for text in texts]
    final: dict[str, Any] | None = {
        **chunk(path, ""),
        "done": True,
        "prompt_eval_count": draw(st.integers(0, 10**6)),
        "eval_count": draw(st.integers(0, 10**6)),
    }
    malformed = draw(st.booleans())
    if malformed:
        # Nor what a client's JSON decoder refuses: a BOM before an object, NaN.
        refused = ["\ufeff" + json.dumps(chunk(path, "x")), '{"model": "m", "x": NaN}']
        bad = draw(st.sampled_from(["{not json", "[1, 2]", '"text"', "null", "data: {}", *refused]))
        lines.insert(draw(st.integers(0, len(lines))), bad)
    if draw(st.booleans()):
        lines.append(json.dumps(final))
        after = ["{not json", '{"error": "late"}', json.dumps(final), json.dumps(chunk(path, "x"))]
        lines += draw(st.lists(st.sampled_from(after), max_size=3))
    else:
        final = None
    text = "\n".join(lines) + ("\n" if draw(st.booleans()) else "")
    return path, text.encode(), final, malformed


def said(prompt: int, reply: int) -> tuple[str, bytes, dict[str, Any], bool]:
    """A stream of only its final chunk, saying these counts (as :func:`lying_stream` draws)."""
    final = {**chunk("/api/chat", ""), "done": True}
    final |= {"prompt_eval_count": prompt, "eval_count": reply}
    return "/api/chat", json.dumps(final).encode(), final, False


def strict_json(text: str) -> Any:
    """``text`` as a client's JSON decoder reads it (JavaScript's ``JSON.parse``, Go's): no
    BOM before it (Python's refuses that too), no NaN or Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@EXAMPLES
@given(example=lying_stream())
@example(example=said(32_831, 0))  # ci110: a prompt count past the request's most, cut to it
@example(example=said(0, 900_000))  # a reply count past the answer's most
def test_a_lying_stream_gives_the_client_one_well_formed_answer_and_its_span(
    scripted: tuple[Gateway, Any], example: tuple[str, bytes, dict[str, Any] | None, bool]
) -> None:
    """Every line the client gets is a JSON object and the last one ends the answer (its
    ``done`` chunk or an error): nothing after the end, a line that is not JSON breaks the
    stream, and a last line without its newline still counts. The span says the same."""
    gw, server = scripted
    path, body, final, malformed = example
    server.answer = (200, {"content-type": "application/x-ndjson"}, body)
    reply = call_with(gw, path, f"m{next(models)}", stream=True)
    assert reply.status_code == 200
    got = [strict_json(line) for line in reply.text.splitlines()]
    assert all(isinstance(item, dict) for item in got)
    ends = [i for i, item in enumerate(got) if item.get("done") is True or "error" in item]
    assert ends == [len(got) - 1], reply.text
    span = last_span(gw)
    if malformed or final is None:
        assert "error" in got[-1]
        assert (span.status, span.error_type) == ("error", "stream_error")
    else:
        assert got[-1] == final
        pieces = len(texts_of(body))  # each a token at least: fewer reported are not believed
        # A count past what the request could hold, or the answer could have generated (their
        # bytes and the most a model adds or hides), is cut to that most (meter._honest): never
        # below what a model may add or hide.
        said, said_out = final["prompt_eval_count"], final["eval_count"]
        assert span.status == "ok"
        assert prompt_charged(said, span.input_tokens, -1)
        out = span.output_tokens
        assert reply_charged(said_out, out, pieces) and out >= pieces
        believed = said_out >= pieces and (span.input_tokens, out) == (said, said_out)
        assert span.token_source == ("reported" if believed else "estimated")


def texts_of(body: bytes) -> list[str]:
    """The pieces of reply text a stream's lines carry before its final chunk."""
    texts = []
    for line in body.splitlines():
        item = json.loads(line)
        if item.get("done") is True:
            return texts
        texts.append(str(item.get("response") or item.get("message", {}).get("content") or ""))
    return texts


BIG = "thought " * 12_500  # 100 kB: 100,000 tokens at most, 100 USD at the test's price


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/chat", {"role": "assistant", "content": "", "thinking": BIG}),
        ("/api/chat", {"role": "tool", "content": "", "tool_name": BIG}),
        ("/v1/chat/completions", {"role": "assistant", "content": "", "reasoning": BIG}),
        ("/v1/chat/completions", {"role": "tool", "content": "", "name": BIG}),
        # Ollama makes each part a message of its own, with its own role markers.
        ("/v1/chat/completions", {"role": "user", "content": [{"type": "text", "text": "a"}] * 1_000}),
    ],
)  # fmt: skip
def test_every_text_a_message_carries_counts_toward_a_hard_budgets_bound(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    path: str,
    message: dict[str, Any],
) -> None:
    """A call is admitted on the most its prompt can count: a message's thinking, tool name
    or reasoning reaches the template too, so 100 kB there cannot pass as a few tokens."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10_000_000, currency="USD")
    )  # 10 USD: a short chat's bound (about 8.3 USD, its reply capped at 4096 tokens) fits
    short = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    assert gw.client.post(path, json=short, headers=SALES).status_code == 200
    before = len(emulator.calls)
    reply = gw.client.post(path, json={**short, "messages": [message, *HI]}, headers=SALES)
    assert reply.status_code == 429, reply.text
    assert len(emulator.calls) == before


@pytest.mark.parametrize(
    ("path", "stream"),
    [("/api/chat", False), ("/api/chat", True), ("/v1/chat/completions", False)],
)
def test_a_caller_that_leaves_before_the_answer_starts_stops_ollama_and_is_client_abort(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    path: str,
    stream: bool,
) -> None:
    """A plain request is not cancelled when its client leaves: the gateway listens for it,
    so Ollama is not left computing a whole answer for nobody (the span said ``ok`` once
    Ollama finished, or ``timeout``), and the call is not retried."""
    gw = serve_on(emulator.url, sqlite_url)
    emulator.inject(Fault.HANG)  # Ollama says nothing until its caller leaves (or 30 s pass)
    before = len(emulator.requests_to(path))
    body = json.dumps({"model": "llama3.1:8b", "messages": HI, "stream": stream}).encode()
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as caller:
        caller.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 20
        while len(emulator.requests_to(path)) == before:  # leaves once Ollama has the call
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 20  # well before the emulator would give up hanging
    while not gw.ledger.count() and time.monotonic() < deadline:
        time.sleep(0.05)
    span = last_span(gw)
    assert (span.status, span.error_type) == ("client_abort", "client_abort")
    assert len(emulator.requests_to(path)) == before + 1  # not retried for nobody


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/embeddings", "/api/show", "/api/tags"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_that_hangs_up_mid_body_is_no_traceback_and_a_metered_call_a_span(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    path: str,
    framing: str,
) -> None:
    """Half a body, then the connection closed: anyone could fill the gateway's log with
    "Exception in ASGI application" tracebacks. A metered route writes the call as
    ``client_abort``; a pass-through one writes nothing; neither logs an error."""
    gw = serve_on(emulator.url, sqlite_url)
    seen = _Records()
    logging.getLogger("uvicorn.error").addHandler(seen)
    try:
        host, port = gw.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nX-Ometer-Department: sales\r\n"
            if framing == "chunked":
                sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n5\r\n".encode() + b'{"mod')
            else:
                sock.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode() + b'{"model":')
            time.sleep(0.2)  # the gateway is reading the body when the client leaves
        metered = path in ROUTES
        deadline = time.monotonic() + 10
        while gw.ledger.count() < metered and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # an error would be logged by now
    finally:
        logging.getLogger("uvicorn.error").removeHandler(seen)
    assert [r.getMessage() for r in seen.records if r.levelno >= logging.WARNING] == []
    assert gw.ledger.count() == metered
    if metered:
        span = last_span(gw)
        assert (span.status, span.error_type, span.department) == (
            "client_abort",
            "client_abort",
            "sales",
        )


def _event(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


SSE_CHUNK = {"model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
SSE_USAGE = {"model": "m", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


@pytest.mark.parametrize(
    ("events", "ok"),
    [
        ([SSE_CHUNK, "{not json", SSE_CHUNK, SSE_USAGE, "[DONE]"], False),
        ([SSE_CHUNK, SSE_USAGE, "[DONE]", SSE_CHUNK, '{"error": {"message": "late"}}'], True),
        ([": keep-alive", SSE_CHUNK, SSE_USAGE, "[DONE]"], True),
        ([SSE_CHUNK, SSE_USAGE], False),
    ],
)
@pytest.mark.parametrize("unterminated", [False, True])
def test_a_lying_openai_stream_gives_the_client_what_its_span_says(
    scripted: tuple[Gateway, Any], events: list[Any], ok: bool, unterminated: bool
) -> None:
    """The SSE twin of the NDJSON property: data that is not JSON breaks the stream, nothing
    follows ``[DONE]``, comments pass, and a last event without its blank line still counts."""
    gw, server = scripted
    text = "".join(e if isinstance(e, str) and e.startswith(":") else _event(e) for e in events)
    if unterminated:
        text = text.removesuffix("\n\n") + "\n"
    server.answer = (200, {"content-type": "text/event-stream"}, text.encode())
    body = {"model": f"m{next(models)}", "messages": HI, "stream": True}
    reply = gw.client.post("/v1/chat/completions", json=body)
    data = [e.removeprefix("data: ") for e in reply.text.split("\n\n") if e.startswith("data: ")]
    span = last_span(gw)
    if ok:
        assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
        assert all("error" not in json.loads(d) for d in data[:-1])
        assert (span.status, span.input_tokens, span.output_tokens) == ("ok", 7, 3)
    else:
        assert "error" in json.loads(data[-1]) and "[DONE]" not in data
        assert (span.status, span.error_type) == ("error", "stream_error")


class _SlowBody(BaseHTTPRequestHandler):
    """Sends a whole answer's headers and its first bytes, then nothing until the caller leaves."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "1000")
        self.end_headers()
        self.wfile.write(b'{"model": "m",')
        self.wfile.flush()
        self.connection.settimeout(20)
        try:
            left = self.connection.recv(1) == b""
        except OSError:
            left = True
        if left:
            self.server.dropped.set()  # type: ignore[attr-defined]
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_caller_that_leaves_while_a_whole_answer_arrives_stops_ollama(
    serve_on: Callable[..., Gateway], sqlite_url: str
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowBody)
    server.dropped = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = serve_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{gw.url}/api/chat",
                json={"model": "m", "messages": HI, "stream": False},
                timeout=0.5,
            )
        assert server.dropped.wait(15)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while not gw.ledger.count() and time.monotonic() < deadline:
            time.sleep(0.05)
        span = last_span(gw)
        assert (span.status, span.error_type) == ("client_abort", "client_abort")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/embeddings", {"prompt": BIG}),
        # Ollama's /api/embeddings reads only its prompt: an input beside it is no prompt.
        ("/api/embeddings", {"prompt": BIG, "input": None}),
        ("/api/embeddings", {"prompt": BIG, "input": ""}),
        ("/api/embeddings", {"prompt": BIG, "input": []}),
        ("/api/embed", {"input": BIG}),
        ("/api/embed", {"input": [BIG], "prompt": ""}),
        ("/v1/embeddings", {"input": BIG, "prompt": ""}),
    ],
)
def test_an_embedding_is_bounded_by_the_field_ollama_embeds(
    budgeted_10: Gateway, emulator: OllamaEmulator, path: str, body: dict[str, Any]
) -> None:
    """A hard budget bounds an embedding by the text Ollama embeds, whatever else the body
    carries: a prompt of 100 kB cannot pass as an empty input."""
    gw = budgeted_10
    before = len(emulator.calls)
    reply = gw.client.post(path, json={"model": "nomic-embed-text", **body}, headers=SALES)
    assert reply.status_code == 429, reply.text[:200]
    assert len(emulator.calls) == before


@pytest.fixture
def budgeted_10(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Gateway:
    """An in-process gateway where acme/sales has a hard budget of 10 USD (10,000 prompt tokens)."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10_000_000, currency="USD")
    )
    return gw


TOOL_CALL = {"function": {"name": "look", "arguments": {}}}
LONG_CALL = {"function": {"name": "look", "arguments": {"q": "x" * 40_000}}}  # ~10,000 tokens
UNSEEN_PIECES = [
    ("/api/chat", {"message": {"role": "assistant", "content": "", "thinking": "hmm"}}),
    ("/api/chat", {"message": {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]}}),
    ("/api/chat", {"message": {"role": "assistant", "content": "", "tool_calls": [LONG_CALL]}}),
    ("/api/generate", {"response": "", "thinking": "hmm"}),
    ("/v1/chat/completions", {"choices": [{"index": 0, "delta": {"reasoning": "hmm"}}]}),
    (
        "/v1/chat/completions",
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **TOOL_CALL}]}}]},
    ),
]


@pytest.mark.parametrize(("path", "piece"), UNSEEN_PIECES)
def test_a_stream_past_the_cap_in_thinking_or_tool_calls_is_cut_there_too(
    scripted: tuple[Gateway, Any], path: str, piece: dict[str, Any]
) -> None:
    """Thinking and tool calls are reply tokens too: a server that ignores the cap and
    streams them without reply text is cut at the cap like one that streams text. The cut
    stream has no counts, and its estimate stops at the cap too: a tool call is estimated
    from its length, and one long call must not charge a hard budget past its bound."""
    gw, server = scripted
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    cap = 3
    if path.startswith("/v1/"):
        items = [_event({"model": "m", **piece}) for _ in range(10)]
        items += [_event(SSE_USAGE), _event("[DONE]")]
        server.answer = (200, {"content-type": "text/event-stream"}, "".join(items).encode())
        body = {"model": "m", "messages": HI, "stream": True, "max_tokens": cap}
    else:
        final = {"model": "m", "done": True, "prompt_eval_count": 7, "eval_count": 10}
        lines = [json.dumps({"model": "m", "done": False, **piece})] * 10 + [json.dumps(final)]
        server.answer = (200, {"content-type": "application/x-ndjson"}, "\n".join(lines).encode())
        body = {"model": "m", "stream": True, "options": {"num_predict": cap}, **GENERATING[path]}
    reply = gw.client.post(path, json=body, headers=SALES)
    *items, last = streamed_items(reply.text, path)
    assert len(items) == cap, reply.text
    assert "streamed more than the" in json.dumps(last["error"])
    span = last_span(gw)
    assert (span.status, span.error_type, span.output_tokens) == ("error", "over_cap", cap)


def nested(value: str, depth: int) -> str:
    """``value`` (JSON text) inside ``depth`` lists."""
    return "[" * depth + value + "]" * depth


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/api/chat", '"tools": [{"function": %s}]'),
        ("/v1/chat/completions", '"tools": [{"function": %s}]'),
        ("/api/chat", '"messages": [{"role": "assistant", "content": "", "tool_calls": [%s]}]'),
    ],
)
def test_a_deeply_nested_text_counts_toward_the_bound_at_any_depth(
    budgeted_10: Gateway, emulator: OllamaEmulator, path: str, where: str
) -> None:
    """100 kB in a request's tools is 100 kB at any depth: one nested just short of what the
    gateway parses was measured as nothing (the measuring ran out of stack), so admitted."""
    gw = budgeted_10
    before = len(emulator.calls)
    big = json.dumps(BIG)
    for depth in range(880, 1000):
        raw = '{"model": "llama3.1:8b", "stream": false, ' + where % nested(big, depth) + "}"
        if '"messages"' not in raw:
            raw = raw.replace('"stream"', f'"messages": {json.dumps(HI)}, "stream"')
        reply = gw.client.post(
            path, content=raw, headers={**SALES, "content-type": "application/json"}
        )
        assert reply.status_code in (400, 429), (depth, reply.text[:200])
    assert len(emulator.calls) == before


@EXAMPLES
@given(
    path=st.sampled_from(sorted(GENERATING)),
    depth=st.integers(1, 1100),
    large=st.booleans(),
    stream=st.booleans(),
)
@example(path="/v1/chat/completions", depth=975, large=True, stream=False)  # was a 500
@example(path="/api/chat", depth=975, large=False, stream=True)
def test_a_body_nested_as_deep_as_it_may_be_is_answered_and_spanned_whatever_its_size(
    budgeted: Gateway, path: str, depth: int, large: bool, stream: bool
) -> None:
    """Under a hard budget the body is sent on with its reply cap, written again: a body
    over 64 KiB (parsed in a thread, where more stack is left) nested 966 deep was taken,
    then could not be written again on the event loop: a 500 and a traceback, and no span.
    How deep a body may nest no longer depends on where it is parsed."""
    from ollama_meter.gateway._json import MAX_DEPTH

    pad = "a" * (70_000 if large else 10)
    raw = json.dumps(
        {"model": "llama3.1:8b", "stream": stream, **GENERATING[path], "pad": pad, "x": None}
    ).replace("null", nested("1", depth))
    before = len(budgeted.ledger.latest(SpanFilter(), 1000))
    reply = budgeted.client.post(path, content=raw, headers=SALES)
    if depth + 1 > MAX_DEPTH:  # the body is one level itself
        assert reply.status_code == 400, reply.text[:200]
        assert error_text(reply, path).startswith("the JSON body is nested too deeply")
    else:
        assert reply.status_code == 200, reply.text[:200]
    assert len(budgeted.ledger.latest(SpanFilter(), 1000)) == before + 1


@pytest.mark.parametrize(
    "alias",
    ["library/llama3.1:8b", "registry.ollama.ai/library/llama3.1:8b", "Library/LLAMA3.1:8b"],
)
def test_a_model_spelled_as_ollama_also_reads_it_is_priced_and_bounded_alike(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, alias: str
) -> None:
    """Ollama reads ``library/llama3.1:8b`` and ``registry.ollama.ai/library/llama3.1:8b`` as
    ``llama3.1:8b``: a rule for ``llama3.1:*`` prices them, so a hard budget bounds them (they
    were unpriced, so free: a 100 kB prompt passed a 10 USD budget)."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices("llama3.1:*"))
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10_000_000, currency="USD")
    )
    before = len(emulator.calls)
    big = {"model": alias, "prompt": BIG, "stream": False}
    assert gw.client.post("/api/generate", json=big, headers=SALES).status_code == 429
    assert len(emulator.calls) == before
    small = {"model": alias, "prompt": "hello", "stream": False}
    reply = gw.client.post("/api/generate", json=small, headers=SALES)
    assert reply.status_code == 200, reply.text[:200]
    span = last_span(gw)
    assert span.cost_total > 0 and not span.unpriced_usage


@pytest.mark.parametrize(
    ("path", "cap"),
    [
        ("/api/chat", 10**30),
        ("/api/chat", 10**308),  # past a float's range, a 400: test_requests.py
        ("/api/chat", 2**63 - 1),
        ("/v1/chat/completions", 2**63 - 1),  # past it, no Go int: refused as Ollama does
    ],
    ids=["api-1e30", "api-1e308", "api-2^63-1", "v1-2^63-1"],
)
def test_a_reply_cap_past_any_budget_is_refused_with_what_it_may_cost(
    budgeted: Gateway, emulator: OllamaEmulator, path: str, cap: int
) -> None:
    """A cap of 10^30 tokens may cost what the most tokens a span can count costs: the refusal
    says so. Writing 10^27 USD out ran past Decimal's 28 digits (and 10^4298 tokens' cost past
    the digits Python writes an integer in, a cap now refused as no float holds it), so the
    caller got a 500 and no span was written.
    (On ``/v1`` a cap past 64 bits is a 400, budget or not: ``test_reply_cap_values.py``.)"""
    body: dict[str, Any] = {"model": "llama3.1:8b", "stream": False, "messages": HI}
    if path.startswith("/v1/"):
        body["max_tokens"] = cap
    else:
        body["options"] = {"num_predict": cap}
    before, spans = len(emulator.calls), budgeted.ledger.count()
    reply = budgeted.client.post(path, json=body, headers=SALES)
    assert reply.status_code == 429, reply.text[:300]
    assert "this call may cost up to" in error_text(reply, path)
    assert len(emulator.calls) == before
    assert budgeted.ledger.count() == spans + 1
    assert last_span(budgeted).status == "rejected"


@pytest.mark.parametrize(
    ("path", "inputs"),
    [
        ("/api/embed", ["a"] * 3_000),
        ("/api/embed", [""] * 3_000),
        ("/v1/embeddings", ["a"] * 3_000),
        ("/v1/embeddings", [[1]] * 3_000),
    ],
)
def test_each_embedding_input_counts_its_own_special_tokens_toward_the_bound(
    app_on: Callable[..., Gateway], sqlite_url: str, path: str, inputs: list[Any]
) -> None:
    """Each input of an embedding is tokenized on its own, with the model's special tokens
    (BERT's [CLS] and [SEP]): 3,000 one-byte inputs count 9,000 tokens, not 3,032. Bounded
    by bytes alone, the call was admitted under 5 USD and cost 9 USD."""
    nomic = dataclasses.replace(DEFAULT_MODELS[-1], template_tokens=2)
    with OllamaEmulator(models=[*DEFAULT_MODELS[:-1], nomic]) as upstream:
        gw = app_on(upstream.url, sqlite_url)
        gw.ledger.add_price_rule(token_prices())
        gw.ledger.save_budget(
            Budget(tenant="acme", department="sales", period="day", limit=5_000_000, currency="USD")
        )
        body = {"model": "nomic-embed-text", "input": inputs}
        reply = gw.client.post(path, json=body, headers=SALES)
        assert reply.status_code == 429, reply.text[:200]
        # no call reached Ollama: only what a gateway under a hard budget asks once, whether
        # a gateway on its ledger is behind it (``gateway._onward.ask_upstream``)
        assert [r.path for r in upstream.requests] == ["/api/version"]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_call_slower_than_its_models_history_is_cut_at_the_time_it_was_admitted_on(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    path: str,
    stream: bool,
) -> None:
    """GPU time under a hard budget is bounded from the model's recent calls: a server gone
    far slower ran calls past what the budget held for them (four at once spent past the
    limit). Cut once it has run as long as it was admitted on, streamed or whole (a whole
    answer comes only at its end: the gateway stops waiting), and charged the time it ran."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(dataclasses.replace(token_prices(), gpu_hour=Decimal(3600)))
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    cap = {"max_tokens": 8} if path.startswith("/v1/") else {"options": {"num_predict": 8}}
    body = {"model": "llama3.1:8b", "stream": stream, **GENERATING[path], **cap}
    gw.ledger.record([quick_history()])
    emulator.token_latency = 0.5  # 8 tokens in 4 s, admitted on about 0.8 s
    try:
        reply = gw.client.post(path, json=body, headers=SALES)
    finally:
        emulator.token_latency = 0.0
    span = last_span(gw)
    assert (span.status, span.error_type) == ("error", "over_cap")
    assert span.duration_source == "measured" and span.cost_compute > 0  # the time it ran
    message = "of busy time it was admitted on"
    if stream:  # cut mid-stream (an error item), or before its first byte came (a 502)
        assert reply.status_code in (200, 502) and message in reply.text
    else:
        assert reply.status_code == 502 and message in error_text(reply, path)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("hard", [True, False], ids=["hard-budget", "no-budget"])
def test_waiting_to_retry_a_failed_attempt_is_neither_cut_nor_charged_as_busy_time(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    stream: bool,
    hard: bool,
) -> None:
    """A call admitted on about 1.7 s of GPU time, whose first attempt got a 503, waited two
    seconds before its retry: the wait ran its time out, so the quick answer that followed was
    cut (a 502, and a span charged for GPU time Ollama never spent). Waiting between attempts
    is not Ollama's time: the call is served, and its busy time leaves the wait out (with no
    budget at all, a /v1 call was charged the wait as GPU time). The bound is wide so that a
    loaded machine does not run the quick answer itself past it."""
    monkeypatch.setenv("OMETER_RETRY_BACKOFF", "2")  # longer than the call was admitted on
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(dataclasses.replace(token_prices(), gpu_hour=Decimal(3600)))
    if hard:
        gw.ledger.save_budget(
            Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
        )
    gw.ledger.record([quick_history()])
    cap = {"max_tokens": 48} if path.startswith("/v1/") else {"options": {"num_predict": 48}}
    body = {"model": "llama3.1:8b", "stream": stream, **GENERATING[path], **cap}
    emulator.inject(Fault.HTTP_503, times=1)
    reply = gw.client.post(path, json=body, headers=SALES)
    assert reply.status_code == 200, reply.text[:300]
    assert len(emulator.requests_to(path)) == 2
    span = last_span(gw)
    assert (span.status, span.error_type) == ("ok", None)
    busy = span.prompt_eval_duration_ns + span.eval_duration_ns
    if span.duration_source == "measured":  # the meter's clock: the wait of 1 s at least is out
        assert busy <= span.latency_ns - 2_000_000_000
