"""Client mistakes are 4xx in the route's own format, with a span; Ollama's failures end calls as errors.

Issue 8 items 13, 18 and 19: request shapes checked against the documented
bodies; a broken stream ends with an error the official clients raise on; any
``error`` in what Ollama sends is an error, not an ``ok`` charged on estimates.
"""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from typing import Any

import httpx
import ollama
import openai
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import ERROR_500, ERROR_MIDSTREAM, Fault, OllamaEmulator
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hello"}]


def spans(gw: Gateway) -> list[Any]:
    return gw.ledger.latest(SpanFilter(), 100)


MISTAKES: list[tuple[str, Any, str]] = [
    ("/api/chat", {"model": "llama3.1:8b", "messages": "hello"}, "messages: input should be a valid list, got a string"),
    ("/api/chat", {"model": "llama3.1:8b", "messages": ["hello"]}, "messages.0: input should be a valid object, got a string"),
    ("/api/chat", {"model": "llama3.1:8b", "messages": 7}, "messages: input should be a valid list, got a number"),
    ("/api/chat", {"model": "llama3.1:8b", "messages": [{"role": "user", "content": ["x"]}]}, "messages.0.content: input should be a valid string, got a list"),
    ("/api/chat", {"model": "   ", "messages": HI}, "model is required"),
    ("/api/chat", {"model": 7, "messages": HI}, "model: input should be a valid string naming a model, got a number"),
    ("/v1/chat/completions", {"model": ["llama3.1:8b"], "messages": HI}, "model: input should be a valid string naming a model, got a list"),
    ("/api/chat", {"model": None, "messages": HI}, "model is required"),
    ("/api/chat", {"model": "llama3.1:8b", "stream": "yes"}, "stream: input should be a valid boolean, got a string"),
    ("/api/generate", {"model": "llama3.1:8b", "prompt": ["a"]}, "prompt: input should be a valid string, got a list"),
    ("/api/embed", {"model": "nomic-embed-text", "input": 5}, "input: must be a string or a list of strings, got a number"),
    ("/api/embed", {"model": "nomic-embed-text", "input": [1, 2]}, "input: must be a string or a list of strings, got a list"),
    ("/api/embeddings", {"model": "nomic-embed-text", "prompt": {"a": 1}}, "prompt: input should be a valid string, got an object"),
    ("/v1/chat/completions", {"model": "llama3.1:8b", "messages": "hi"}, "messages: input should be a valid list, got a string"),
    ("/v1/chat/completions", {"model": "llama3.1:8b", "messages": HI, "stream": True, "stream_options": "yes"}, "stream_options: input should be a valid object, got a string"),
    ("/v1/chat/completions", {"model": "llama3.1:8b", "messages": HI, "stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage: input should be a valid boolean, got a string"),
    ("/v1/chat/completions", {"model": "", "messages": HI}, "model is required"),
    ("/v1/completions", {"model": "mistral:7b", "prompt": {"a": 1}}, "prompt: must be a string, a list of strings, a list of token ids or a list of such lists, got an object"),
    ("/v1/embeddings", {"model": "nomic-embed-text", "input": {"a": 1}}, "input: must be a string, a list of strings, a list of token ids or a list of such lists, got an object"),
    ("/v1/embeddings", {"model": "nomic-embed-text"}, "input is required"),
]  # fmt: skip


def error_of(reply: httpx.Response) -> str:
    body = reply.json()
    return str(body["error"]["message"] if isinstance(body["error"], dict) else body["error"])


def test_malformed_bodies_are_400_in_the_routes_format_each_with_a_span(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    for path, body, message in MISTAKES:
        reply = sqlite_app.client.post(path, json=body)
        assert reply.status_code == 400, (path, body, reply.text)
        assert error_of(reply) == message
        if path.startswith("/v1/"):
            assert reply.json()["error"]["type"] == "invalid_request_error"
    deep = b'{"model": "llama3.1:8b", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = sqlite_app.client.post("/api/chat", content=deep)
    assert reply.status_code == 400 and error_of(reply) == "the JSON body is nested too deeply"
    recorded = spans(sqlite_app)
    assert len(recorded) == len(MISTAKES) + 1
    assert {(s.status, s.error_type, s.http_status) for s in recorded} == {
        ("error", "bad_request", 400)
    }
    assert emulator.requests_to("/api/chat") == []  # nothing malformed reached Ollama


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    where=st.sampled_from(
        [
            ("/api/chat", ("options", "num_predict")),
            ("/api/generate", ("options", "temperature")),
            ("/v1/chat/completions", ("max_tokens",)),
            ("/api/chat", ("x_custom",)),
        ]
    ),
    number=st.one_of(
        st.integers(309, 100_000).map(lambda exponent: f"1e{exponent}"),
        st.tuples(st.sampled_from(["", "-"]), st.integers(309, 20_000)).map(
            lambda sign_zeros: f"{sign_zeros[0]}1{'0' * sign_zeros[1]}"
        ),
    ),
)
@example(where=("/api/chat", ("options", "seed")), number="9" * 4301)
@example(where=("/v1/chat/completions", ("max_tokens",)), number="9" * 309)
def test_a_number_past_what_a_float_holds_is_a_400_not_infinity_sent_on(
    sqlite_app: Gateway, emulator: OllamaEmulator, where: tuple[str, tuple[str, ...]], number: str
) -> None:
    """JSON has no infinity: ``1e400`` read as one would reach Ollama (or a bound) as ``Infinity``.

    Written as an integer's digits it is past Go's float64 (what Ollama reads a number into
    where it is not an integer field) as well: it was relayed to Ollama, which refuses it,
    and past 4,300 digits refused in Python's words ('use sys.set_int_max_str_digits()').
    """
    path, keys = where
    body: dict[str, Any] = {"model": "llama3.1:8b", "messages": HI, "prompt": "hi"}
    placeholder = 123456789.5
    *parents, last = keys
    inner = body
    for key in parents:
        inner = inner.setdefault(key, {})
    inner[last] = placeholder
    raw = json.dumps(body).replace(repr(placeholder), number).encode()
    emulator.reset()
    reply = sqlite_app.client.post(path, content=raw)
    assert reply.status_code == 400, reply.text[:300]
    assert error_of(reply) == (
        f"invalid JSON body: the number {number[:40]} is too large for Ollama to read"
    )
    assert emulator.requests == []


def test_the_largest_integer_a_float_holds_goes_on_as_written(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    """The bound is the float's, not a count of digits: 309 digits that round to the largest
    float64 are read by Go as that float, so they go to Ollama, byte for byte."""
    largest = str(int(sys.float_info.max))
    assert len(largest) == 309
    raw = json.dumps({"model": "llama3.1:8b", "messages": HI, "stream": False, "x": 1})
    reply = sqlite_app.client.post("/api/chat", content=raw.replace('"x": 1', f'"x": {largest}'))
    assert reply.status_code == 200, reply.text[:300]
    (sent,) = emulator.requests_to("/api/chat")
    assert sent.body["x"] == int(largest)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    where=st.sampled_from(
        [
            ("/v1/chat/completions", ()),
            ("/v1/completions", ()),
            ("/api/chat", ()),
            ("/v1/chat/completions", ("stream_options",)),
            ("/api/generate", ("options",)),
            ("/v1/embeddings", ()),
        ]
    ),
    key=st.sampled_from(["stream", "model", "include_usage", "num_predict", "x_custom"]),
    first=st.sampled_from(["true", "5", '"a"', "{}"]),
    second=st.sampled_from(["null", "false", "{}"]),
)
def test_a_key_given_twice_in_one_object_is_a_400(
    sqlite_app: Gateway,
    emulator: OllamaEmulator,
    where: tuple[str, tuple[str, ...]],
    key: str,
    first: str,
    second: str,
) -> None:
    """Ollama's Go decoder and the gateway read a repeated key differently: a null is no
    change to Go (``"stream": true, "stream": null`` streams), a repeated object is merged;
    the gateway took the last. So a /v1 call Ollama streamed was read as a whole answer,
    failed as one, and its generation was charged nothing."""
    path, parents = where
    repeated = f'"{key}": {first}, "{key}": {second}'
    inner = "{" + repeated + "}"
    for parent in reversed(parents):
        inner = f'{{"{parent}": {inner}}}'
    outer = inner if parents else "{" + repeated + "}"
    body = json.loads(outer.replace(repeated, f'"{key}": {second}'))  # as the gateway read it
    base = {"model": "llama3.1:8b", "messages": HI, "prompt": "hi", "input": "hi"}
    rest = json.dumps({k: v for k, v in base.items() if k not in body})[1:-1]
    raw = (outer[:-1] + ", " + rest + "}").encode()
    emulator.reset()
    before = len(spans(sqlite_app))
    reply = sqlite_app.client.post(path, content=raw)
    assert reply.status_code == 400, (raw, reply.text)
    assert error_of(reply) == (
        f'the key "{key}" is given twice in one object, which Ollama reads otherwise than '
        "the last one (a repeated null changes nothing, repeated objects are merged): "
        "give each key once"
    )
    assert emulator.requests == []
    assert len(spans(sqlite_app)) == before + 1


COMPRESSED = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": lambda data: b"\x8b\x02\x80" + data,
}
BODIES = {
    "/api/chat": {"model": "llama3.1:8b", "messages": HI, "stream": False},
    "/api/embed": {"model": "nomic-embed-text", "input": "hello"},
    "/v1/chat/completions": {"model": "llama3.1:8b", "messages": HI},
}


@pytest.mark.parametrize("coding", sorted(COMPRESSED))
@pytest.mark.parametrize("path", sorted(BODIES))
def test_a_compressed_body_is_a_400_that_says_so(
    sqlite_app: Gateway, emulator: OllamaEmulator, coding: str, path: str
) -> None:
    """It was "invalid JSON body: 'utf-8' codec can't decode byte 0x8b in position 1": true,
    and no help to a client that compressed its body (Ollama does not decode one either)."""
    body = COMPRESSED[coding](json.dumps(BODIES[path]).encode())
    reply = sqlite_app.client.post(path, content=body, headers={"content-encoding": coding})
    assert reply.status_code == 400
    assert error_of(reply) == (
        f"the request body is sent as Content-Encoding: {coding}, which neither the gateway "
        "nor Ollama decodes; send the JSON uncompressed"
    )
    assert emulator.requests == []
    assert [(s.error_type, s.http_status) for s in spans(sqlite_app)] == [("bad_request", 400)]


def test_a_json_body_labelled_compressed_is_still_read_as_ollama_reads_it(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    """Ollama reads a request body as it comes, whatever it is labelled: so does the gateway."""
    body = json.dumps(BODIES["/api/chat"]).encode()
    reply = sqlite_app.client.post("/api/chat", content=body, headers={"content-encoding": "gzip"})
    assert reply.status_code == 200 and len(emulator.requests_to("/api/chat")) == 1


def test_unknown_fields_pass_through_untouched(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False, "x_custom": {"a": [1]}}
    assert sqlite_app.client.post("/api/chat", json=body).status_code == 200
    (sent,) = emulator.requests_to("/api/chat")
    assert sent.body == body


def test_a_period_past_9999_is_a_400(sqlite_app: Gateway) -> None:
    reply = sqlite_app.client.get("/api/dash?period=9999-12")
    assert reply.status_code == 400 and reply.json()["error"]


def test_an_oversized_body_is_413_with_a_span(
    serve_on: Any, emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = serve_on(emulator.url, sqlite_url, max_body_bytes=4096)
    big = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "x" * 5000}]}
    ollama_reply = httpx.post(f"{gw.url}/api/chat", json=big)
    assert ollama_reply.status_code == 413 and "--max-body-bytes" in error_of(ollama_reply)
    with pytest.raises(openai.APIStatusError) as refused:
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key="-", max_retries=0).chat.completions.create(
            model="llama3.1:8b",
            messages=big["messages"],  # type: ignore[arg-type]
        )
    assert refused.value.status_code == 413
    assert [(s.error_type, s.http_status, s.request_model) for s in spans(gw)] == [
        ("bad_request", 413, ""),
        ("bad_request", 413, ""),
    ]
    assert httpx.post(f"{gw.url}/api/show", json={"model": "x" * 5000}).status_code == 413
    assert emulator.requests == []


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_a_broken_stream_ends_with_an_error_line_the_client_raises_on(
    sqlite_gateway: Gateway, emulator: OllamaEmulator, path: str
) -> None:
    client = ollama.Client(host=sqlite_gateway.url)
    emulator.inject(Fault.DROP, after_tokens=3)
    received: list[Any] = []
    call = (
        client.chat(model="llama3.1:8b", messages=HI, stream=True)
        if path == "/api/chat"
        else client.generate(model="llama3.1:8b", prompt="hello", stream=True)
    )
    with pytest.raises(ollama.ResponseError, match="broke off"):
        received.extend(call)
    assert len(received) == 3
    (span,) = spans(sqlite_gateway)
    assert (span.status, span.error_type, span.output_tokens) == ("error", "stream_error", 3)


def test_a_broken_openai_stream_ends_with_an_error_event(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    client = openai.OpenAI(base_url=f"{sqlite_gateway.url}/v1", api_key="-", max_retries=0)
    emulator.inject(Fault.DROP, after_tokens=2)
    chunks = []
    with pytest.raises(openai.APIError, match="broke off"):
        chunks.extend(
            client.chat.completions.create(model="llama3.1:8b", messages=HI, stream=True)  # type: ignore[arg-type]
        )
    assert len(chunks) == 2
    (span,) = spans(sqlite_gateway)
    assert (span.error_type, span.output_tokens, span.token_source) == (
        "stream_error",
        2,
        "estimated",
    )


def test_an_error_in_a_done_chunk_ends_the_call_as_an_error(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    """{"done": true, "done_reason": "error", "error": ...}: not ok, not charged as ok."""
    client = ollama.Client(host=sqlite_gateway.url)
    emulator.inject(Fault.ERROR_DONE, after_tokens=2)
    with pytest.raises(ollama.ResponseError, match=ERROR_MIDSTREAM):
        list(client.chat(model="llama3.1:8b", messages=HI, stream=True))
    emulator.inject(Fault.ERROR_DONE)
    whole = httpx.post(
        f"{sqlite_gateway.url}/api/chat",
        json={"model": "llama3.1:8b", "messages": HI, "stream": False},
    )
    assert whole.status_code == 502 and ERROR_MIDSTREAM in error_of(whole)
    for span in spans(sqlite_gateway):
        assert (span.status, span.error_type) == ("error", "stream_error")
        assert span.error_message == f"Ollama failed while answering: {ERROR_MIDSTREAM}"
    # A failed call is counted against the model's circuit, never as a success.
    emulator.inject(Fault.ERROR_DONE)
    httpx.post(
        f"{sqlite_gateway.url}/api/chat",
        json={"model": "llama3.1:8b", "messages": HI, "stream": False},
    )
    refused = httpx.post(
        f"{sqlite_gateway.url}/api/chat",
        json={"model": "llama3.1:8b", "messages": HI, "stream": False},
    )
    assert refused.status_code == 503 and "llama3.1:8b" in error_of(refused)


def test_openai_stream_errors_are_stored_as_text(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    client = openai.OpenAI(base_url=f"{sqlite_gateway.url}/v1", api_key="-", max_retries=0)
    emulator.inject(Fault.MIDSTREAM_ERROR, after_tokens=1)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="llama3.1:8b", messages=HI, stream=True))  # type: ignore[arg-type]
    emulator.inject(Fault.HTTP_500, times=3)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="llama3.1:8b", messages=HI)  # type: ignore[arg-type]
    whole, streamed = spans(sqlite_gateway)
    assert streamed.error_message == f"Ollama failed while answering: {ERROR_MIDSTREAM}"
    assert whole.error_message is not None and whole.error_message.endswith(f": {ERROR_500}")
    assert "{" not in whole.error_message


def test_openai_streams_without_usage_keep_model_and_finish_reason(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    client = openai.OpenAI(base_url=f"{sqlite_gateway.url}/v1", api_key="-", max_retries=0)
    emulator.inject(Fault.NO_USAGE)
    list(
        client.chat.completions.create(
            model="llama3.1:8b",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            max_tokens=0,  # no content at all
        )
    )
    emulator.inject(Fault.NO_USAGE)
    client.chat.completions.create(model="llama3.1:8b", messages=HI)  # type: ignore[arg-type]
    whole, empty = spans(sqlite_gateway)
    for span in (whole, empty):
        assert span.status == "ok" and span.response_model == "llama3.1:8b"
        assert span.token_source == "estimated" and span.input_tokens > 0
    assert empty.done_reason == "length" and empty.output_tokens == 0
    assert whole.done_reason == "stop"


def test_a_missing_route_is_a_bad_request_not_a_missing_model(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.inject(Fault.NO_ROUTE)
    reply = sqlite_app.client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a"})
    assert reply.status_code == 404 and reply.text == "404 page not found"
    (span,) = spans(sqlite_app)
    assert (span.error_type, span.http_status) == ("bad_request", 404)
    assert "no such endpoint" in (span.error_message or "")


def test_cli_and_gateway_classify_a_missing_route_alike(emulator: OllamaEmulator) -> None:
    from ollama_meter.errors import UpstreamBadRequest
    from ollama_meter.upstream import Upstream

    emulator.inject(Fault.NO_ROUTE)
    with pytest.raises(UpstreamBadRequest, match="no such endpoint"):
        Upstream(emulator.url).call("embed", {"model": "nomic-embed-text", "input": "a"})
    assert json.loads(json.dumps({"ok": True}))


@pytest.mark.parametrize("callers", [["sales", "support", "sales"], ["sales"] * 3])
def test_a_trial_calls_own_retry_is_not_refused_by_the_circuit_it_reopened(
    serve_on: Any, emulator: OllamaEmulator, sqlite_url: str, callers: list[str]
) -> None:
    """Failures from two departments open the model's circuit; one department's, the circuit
    it has for the model (``test_callers_circuits.py``): either one's trial is retried."""
    from ollama_meter.config import load_settings
    from ollama_meter.upstream import breaker_for

    # The gateway's breaker, on a clock of the test's: its circuit stays open until the test
    # moves the clock, however long the calls take on a busy machine.
    now = [0.0]
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    reset = settings.breaker_reset
    breaker = breaker_for(
        settings.ollama_host,
        threshold=settings.breaker_failures,
        reset_after=reset,
        clock=lambda: now[0],
    )
    gw = serve_on(emulator.url, sqlite_url)
    body = {"model": "mistral:7b", "messages": HI, "stream": False}
    emulator.inject(Fault.HTTP_503, times=9)
    for department in callers:
        sent = httpx.post(f"{gw.url}/api/chat", json=body, headers=_from(department))
        assert sent.status_code == 503
    circuit = ("mistral:7b", "" if len(set(callers)) > 1 else "default/sales")
    assert breaker.state(*circuit) == "open"
    refused = httpx.post(f"{gw.url}/api/chat", json=body, headers=_from("sales"))
    assert refused.status_code == 503  # open: not sent
    assert len(emulator.requests_to("/api/chat")) == 9
    now[0] += reset
    assert breaker.state(*circuit) == "half_open"  # the next call is the trial
    emulator.inject(Fault.HTTP_503)  # ... whose first attempt fails and reopens the circuit
    assert httpx.post(f"{gw.url}/api/chat", json=body, headers=_from("sales")).status_code == 200
    trial = spans(gw)[0]
    assert (trial.status, trial.error_type) == ("ok", None)  # its retry went through
    assert len(emulator.requests_to("/api/chat")) == 11
    assert breaker.state(*circuit) == "closed"


def _from(department: str) -> dict[str, str]:
    return {"X-Ometer-Department": department}


def test_header_limit_and_trailers_in_the_http_protocol(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    """The same protocol as ``ometer serve`` (see test_security.py for the processes)."""
    import socket
    from urllib.parse import urlsplit

    from ollama_meter.gateway import MAX_HEADER_BYTES

    big = httpx.get(f"{sqlite_gateway.url}/api/tags", headers={"X-Big": "a" * MAX_HEADER_BYTES})
    assert big.status_code == 431
    parts = urlsplit(sqlite_gateway.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        for _ in range(3):  # one header arriving in pieces, never ending
            sock.sendall(b"a" * (MAX_HEADER_BYTES // 2))
        assert sock.recv(65536).startswith(b"HTTP/1.1 431 ")
    body = json.dumps({"model": "llama3.1:8b", "messages": HI, "stream": False}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\nX-Ometer-Department: stolen\r\n\r\n"
            % (len(body), body)
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK")
    (span,) = spans(sqlite_gateway)
    assert span.department == "unassigned"


@pytest.mark.parametrize("header", ["X-Ometer-Tenant", "X-Ometer-Department", "X-Ometer-User"])
def test_an_attribution_header_given_twice_is_a_400_not_the_first_one_silently(
    sqlite_app: Gateway, emulator: OllamaEmulator, header: str
) -> None:
    """A proxy on the way may read the other one: nobody can tell who the call is for."""
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    reply = sqlite_app.client.post(
        "/api/chat", json=body, headers=[(header, "sales"), (header, "legal")]
    )
    assert reply.status_code == 400
    assert error_of(reply) == f"{header} is given 2 times; give it once, for one caller"
    (span,) = spans(sqlite_app)
    assert (span.status, span.error_type, span.department) == ("error", "bad_request", "unassigned")
    assert emulator.requests_to("/api/chat") == []
    once = sqlite_app.client.post("/api/chat", json=body, headers={header: "sales"})
    assert once.status_code == 200


def test_each_metered_answer_names_its_span(sqlite_app: Gateway, emulator: OllamaEmulator) -> None:
    """A caller could not tell which span was its call's (to look it up, dispute a charge)."""
    asks = [
        ("/api/chat", {"model": "llama3.1:8b", "messages": HI, "stream": False}),
        ("/api/chat", {"model": "llama3.1:8b", "messages": HI}),  # streamed
        ("/v1/chat/completions", {"model": "llama3.1:8b", "messages": HI}),
        ("/api/chat", {"model": "no-such-model", "messages": HI, "stream": False}),
    ]
    named = []
    for path, body in asks:
        reply = sqlite_app.client.post(path, json=body)
        named.append((reply.status_code, reply.headers["x-ometer-span-id"]))
    stored = {s.id: s.status for s in sqlite_app.ledger.latest(SpanFilter(), 10)}
    assert [(code, stored[span]) for code, span in named] == [
        (200, "ok"),
        (200, "ok"),
        (200, "ok"),
        (404, "error"),
    ]
    assert len({span for _, span in named}) == 4


def test_a_refusal_the_gateway_answers_itself_names_its_span_too(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    """A 400 or 413 is a span like any other: its answer says which one (README, Span id)."""
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    refusals = [
        sqlite_app.client.post("/api/chat", json={"model": "llama3.1:8b", "messages": "hi"}),
        sqlite_app.client.post("/v1/chat/completions", json={**body, "stream_options": "yes"}),
        sqlite_app.client.post(
            "/api/chat", json=body, headers=[("X-Ometer-User", "a"), ("X-Ometer-User", "b")]
        ),
    ]
    stored = {s.id: (s.status, s.error_type) for s in sqlite_app.ledger.latest(SpanFilter(), 10)}
    assert [(r.status_code, stored[r.headers["x-ometer-span-id"]]) for r in refusals] == [
        (400, ("error", "bad_request")),
        (400, ("error", "bad_request")),
        (400, ("error", "bad_request")),
    ]
    assert emulator.requests_to("/api/chat") == []


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/tags"), ("GET", "/api/version"), ("POST", "/api/show")])  # fmt: skip
def test_a_passed_through_answer_has_one_date_the_gateways(
    sqlite_gateway: Gateway, emulator: OllamaEmulator, method: str, path: str
) -> None:
    """Ollama's ``Date`` was relayed beside the one uvicorn writes: two of a field that is one
    (RFC 9110 §6.6.1), which a strict client or a cache in front may refuse or pick from."""
    body = {"model": "llama3.1:8b"} if method == "POST" else None
    reply = sqlite_gateway.client.request(method, path, json=body)
    assert reply.status_code == 200
    assert len(reply.headers.get_list("date")) == 1
    assert len(reply.headers.get_list("server")) == 1


def test_a_connection_holds_a_bounded_number_of_requests_ahead_of_its_answers(
    sqlite_gateway: Gateway, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests pipelined behind one being answered were each parsed and queued, however many
    one read held: 256 KiB of them (14,000) held 18 MB until answered, and a caller that read
    no answer kept them a minute; a few hundred connections took the machine's memory. Those
    past the bound are not read: the ones before are answered, and the connection closed."""
    import logging
    import socket
    from urllib.parse import urlsplit

    from ollama_meter._logging import Throttled
    from ollama_meter.gateway import _server
    from ollama_meter.gateway._server import PIPELINED

    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's own: it does not propagate
    monkeypatch.setattr(_server._ThrottledWarnings, "_throttle", Throttled(uvicorn_log))
    uvicorn_log.addHandler(caplog.handler)
    parts = urlsplit(sqlite_gateway.url)
    request = b"GET /no/such/route HTTP/1.1\r\nhost: x\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request * 1000)
        answers = b""
        try:
            while chunk := sock.recv(65536):
                answers += chunk
        except ConnectionResetError:  # closed with the rest unread
            pass
    uvicorn_log.removeHandler(caplog.handler)
    assert caplog.records == []  # nothing invalid was received
    assert answers.count(b"HTTP/1.1 404 ") == 1 + PIPELINED
    assert answers.count(b"connection: close\r\n") == 1
    assert answers.rpartition(b"HTTP/1.1 404 ")[2].count(b"connection: close\r\n") == 1
    assert sqlite_gateway.client.get("/api/version").status_code == 200
