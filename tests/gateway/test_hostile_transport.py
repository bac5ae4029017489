"""Every metered route before an upstream that breaks its answer in transport, or lies in it.

A loopback proxy before the emulator takes the emulator's real answer (each route's own wire
format, streamed or whole) and spoils it on the way: its counts and durations replaced by
hostile JSON (negative, fractions, strings, booleans, null, past 64 bits), another model
named, the body gzip'd (said or not), a Content-Length that lies, the body cut mid-line,
reset mid-stream, bytes that are not UTF-8, every newline dropped (one huge line), the last
item twice or never, an HTML error page, a 200 that says ``{"error": ...}``.

Whatever it does, the caller gets a clear answer (JSON, or a stream whose items are JSON;
an error page the upstream answered with a 4xx or 5xx is relayed with its status as it came,
the gateway's rule for Ollama's own refusals) well within the timeouts, the call leaves
exactly one span with sane values, and the gateway answers an honest call next.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from ollama_meter.records import MAX_CALL_COST, MAX_DURATION_NS, MAX_TOKENS
from ollama_meter.testing import OllamaEmulator
from tests._raw_http import DRIP_S, _Listener, dripping, read_request
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

models = itertools.count()
ASKED = "hello there from the hostile test"

ROUTES: dict[str, dict[str, Any]] = {
    "/api/chat": {"messages": [{"role": "user", "content": ASKED}]},
    "/api/generate": {"prompt": ASKED},
    "/api/embed": {"input": ASKED},
    "/api/embeddings": {"prompt": ASKED},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": ASKED}]},
    "/v1/completions": {"prompt": ASKED},
    "/v1/embeddings": {"input": ASKED},
    "/v1/responses": {"input": ASKED},
}
STREAMED = frozenset({"/api/chat", "/api/generate", *(p for p in ROUTES if p.startswith("/v1/"))})
STREAMED -= {"/v1/embeddings"}
EMBEDDING = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})

FIGURE = re.compile(
    rb'"(prompt_eval_count|eval_count|prompt_tokens|completion_tokens|total_tokens|'
    rb"input_tokens|output_tokens|total_duration|load_duration|prompt_eval_duration|"
    rb'eval_duration)":\s*-?[0-9]+'
)
MODEL = re.compile(rb'"model":\s*"[^"]*"')
HOSTILE = [
    b"-1",
    b"-9223372036854775809",
    b"1.5",
    b"1e308",
    b'"12"',
    b"true",
    b"null",
    b"10000000000000000000",
    b"9223372036854775808",
    b"9223372036854775807",
    b"18446744073709551616",
    b"1" + b"0" * 40,
]
HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>nginx</h1></body></html>"


@dataclass(frozen=True)
class Spoil:
    """One way to spoil an answer; ``at`` places a cut, a reset or bad bytes (0..1)."""

    kind: str
    value: bytes = b""
    at: float = 0.5
    status: int = 200


def _cut(body: bytes, at: float) -> int:
    return max(1, min(len(body) - 1, int(len(body) * at)))


def _items(body: bytes) -> list[bytes]:
    separator = b"\n\n" if b"data:" in body[:16] or body.startswith(b"event:") else b"\n"
    return [item + separator for item in body.split(separator) if item]


def spoiled(spoil: Spoil, status: int, media: str, body: bytes) -> list[bytes | None]:
    """What the proxy writes for ``spoil`` of the answer (status, media type, body): pieces of
    bytes, None for a reset (the connection closed with unread bytes)."""
    head = f"HTTP/1.1 {status} X\r\ncontent-type: {media}\r\nconnection: close\r\n"
    extra = ""
    match spoil.kind:
        case "honest":
            pass
        case "figures":
            body = FIGURE.sub(lambda m: m.group(0).split(b":")[0] + b": " + spoil.value, body)
        case "model":
            body = MODEL.sub(lambda _: b'"model": "' + spoil.value + b'"', body)
        case "gzip":
            body, extra = gzip.compress(body), "content-encoding: gzip\r\n"
        case "gzip_unsaid":
            body = gzip.compress(body)
        case "long":  # says more than comes, then closes
            head += f"content-length: {len(body) + 100}\r\n\r\n"
            return [head.encode() + body]
        case "short":  # says less than comes
            head += f"content-length: {_cut(body, spoil.at)}\r\n\r\n"
            return [head.encode() + body]
        case "cut":
            body = body[: _cut(body, spoil.at)]
        case "reset":
            head += f"content-length: {len(body)}\r\n\r\n"
            return [head.encode() + body[: _cut(body, spoil.at)], None]
        case "not_utf8":
            n = _cut(body, spoil.at)
            body = body[:n] + b"\xff\xfe\xc3" + body[n:]
        case "bad_first":  # inside the first item's JSON
            n = body.index(b"{") + 1
            body = body[:n] + b"\xff\xfe\xc3" + body[n:]
        case "one_line":
            body = body.replace(b"\n", b" ") + b" " * 300_000
        case "twice":
            items = _items(body)
            body = b"".join(items) + (items[-1] if items else b"")
        case "never":
            body = b"".join(_items(body)[:-1])
        case "coding":  # a coding it does not have, or none at all
            extra = f"content-encoding: {spoil.value.decode()}\r\n"
        case "chunked_bad":  # chunk sizes that lie, then no end
            n = _cut(body, spoil.at)
            head += "transfer-encoding: chunked\r\n\r\n"
            return [head.encode() + b"%x\r\n" % (n + 7) + body[:n] + b"\r\nzz\r\n"]
        case "both_lengths":
            head += "transfer-encoding: chunked\r\n"
        case "no_length":  # ends at the close
            return [head.encode() + b"\r\n" + body]
        case "huge_header":
            extra = "x-junk: " + "a" * 200_000 + "\r\n"
        case "informational":
            head = "HTTP/1.1 100 Continue\r\n\r\n" + head
        case "html":
            head = f"HTTP/1.1 {spoil.status} X\r\ncontent-type: text/html\r\nconnection: close\r\n"
            body = HTML
        case "error_200":
            body = b'{"error": "the model crashed: CUDA error"}\n'
    head += extra + f"content-length: {len(body)}\r\n\r\n"
    return [head.encode() + body]


class HostileProxy(_Listener):
    """A loopback proxy to ``emulator``: each request's model becomes ``real`` (the gateway asks
    for a model of its own each call, so no circuit opens across calls), and the emulator's
    answer is written as :func:`spoiled` says for ``self.spoil``, or for ``self.by_model``'s
    spoil of the model asked for."""

    def __init__(self, emulator: OllamaEmulator) -> None:
        self.emulator = emulator
        self.spoil = Spoil("honest")
        self.by_model: dict[str, Spoil] = {}
        self.http = httpx.Client(base_url=emulator.url, timeout=30)
        super().__init__()

    def close(self) -> None:
        super().close()
        self.http.close()

    def _accepted(self, conn: socket.socket) -> None:
        threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if (request := read_request(conn)) is None:
                return
            head, body = request
            path = head.split(b" ")[1].decode()
            if not body:  # /api/tags, /api/ps...
                got = self.http.get(path)
                conn.sendall(b"".join(p or b"" for p in spoiled(Spoil("honest"), *_of(got))))
                return
            asked = json.loads(body)
            spoil = self.by_model.get(asked.get("model"), self.spoil)
            embedding = path in EMBEDDING
            asked["model"] = "nomic-embed-text:latest" if embedding else "llama3.1:8b"
            got = self.http.post(path, json=asked)
            for piece in spoiled(spoil, *_of(got)):
                if piece is None:  # once the bytes before it are read: a reset drops them
                    time.sleep(0.05)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(piece)
            conn.shutdown(socket.SHUT_WR)


def _of(got: httpx.Response) -> tuple[int, str, bytes]:
    return got.status_code, got.headers.get("content-type", "application/json"), got.content


@pytest.fixture
def hostile(
    serve: Callable[..., Gateway], emulator: OllamaEmulator
) -> Iterator[tuple[Gateway, HostileProxy]]:
    proxy = HostileProxy(emulator)
    try:
        config = {"upstream_timeout": 3, "retries": 0, "breaker_failures": 1000}
        gw = serve(proxy.url, config=config)
        gw.ledger.add_price_rule(token_prices())
        yield gw, proxy
    finally:
        proxy.close()


spoils = st.one_of(
    st.builds(Spoil, st.just("figures"), st.sampled_from(HOSTILE)),
    st.builds(Spoil, st.just("model"), st.sampled_from([b"other:1b", b"", b"\\u0000x"])),
    st.builds(
        Spoil,
        st.sampled_from(["cut", "reset", "short", "not_utf8"]),
        at=st.floats(0.0, 1.0),
    ),
    st.builds(
        Spoil,
        st.sampled_from(["honest", "gzip", "gzip_unsaid", "long", "one_line", "twice", "never"]),
    ),
    st.builds(Spoil, st.just("html"), status=st.sampled_from([200, 500, 502])),
    st.builds(
        Spoil, st.just("coding"), st.sampled_from([b"gzip", b"deflate", b"br", b"zstd", b"x"])
    ),
    st.builds(Spoil, st.just("chunked_bad"), at=st.floats(0.0, 1.0)),
    st.builds(
        Spoil, st.sampled_from(["both_lengths", "no_length", "huge_header", "informational"])
    ),
    st.builds(Spoil, st.just("error_200")),
)

SANE_STATUSES = {"ok", "error"}


def check_answer(path: str, stream: bool, reply: httpx.Response) -> None:
    """A clear answer: JSON (an error says so), or a stream whose items are all JSON."""
    assert reply.status_code < 600
    text = reply.text
    if reply.status_code >= 400 and reply.content == HTML:  # the upstream's own, as it came
        return
    if reply.status_code != 200 or not stream:
        obj = json.loads(text)
        assert isinstance(obj, dict), text[:200]
        if reply.status_code >= 400:
            error = obj.get("error")
            assert isinstance(error, str) or isinstance(error.get("message"), str), text[:200]
        return
    if path.startswith("/v1/"):
        for event in filter(None, text.split("\n\n")):
            data = [line[5:].strip() for line in event.split("\n") if line.startswith("data:")]
            for datum in data:
                if datum != "[DONE]":
                    assert isinstance(json.loads(datum), dict), event[:200]
    else:
        for line in filter(None, text.split("\n")):
            assert isinstance(json.loads(line), dict), line[:200]


def check_span(span: Any) -> None:
    assert span.status in SANE_STATUSES, span.status
    assert 0 <= span.input_tokens <= MAX_TOKENS and 0 <= span.output_tokens <= MAX_TOKENS
    for name, value in span.durations().items():
        assert value is None or 0 <= value <= MAX_DURATION_NS, (name, value)
    assert 0 <= span.cost_total <= MAX_CALL_COST
    parts = span.cost_tokens + span.cost_compute + span.cost_energy + span.cost_fee
    assert span.cost_total == parts


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(sorted(ROUTES)), stream=st.booleans(), spoil=spoils)
@example(path="/api/chat", stream=True, spoil=Spoil("figures", b"10000000000000000000"))
@example(path="/v1/chat/completions", stream=False, spoil=Spoil("gzip"))
def test_a_spoiled_answer_is_a_clear_answer_and_one_sane_span(
    hostile: tuple[Gateway, HostileProxy], path: str, stream: bool, spoil: Spoil
) -> None:
    """Counts past 64 bits are cut to what a span stores, of the wrong type estimated; an
    answer that cannot be read is a 502 or a stream's error item; each is one span."""
    gw, proxy = hostile
    stream = stream and path in STREAMED
    body: dict[str, Any] = {"model": f"m{next(models)}", **ROUTES[path]}
    if path in STREAMED:
        body["stream"] = stream
    before = gw.ledger.count()
    proxy.spoil = spoil
    reply = gw.client.post(path, json=body, timeout=20)
    check_answer(path, stream, reply)
    assert gw.ledger.count() == before + 1
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    check_span(span)
    proxy.spoil = Spoil("honest")
    honest = {**body, "model": f"m{next(models)}"}
    assert gw.client.post(path, json=honest, timeout=20).status_code == 200
    assert gw.ledger.count() == before + 2


unreadable = st.one_of(
    st.builds(Spoil, st.sampled_from(["one_line", "gzip_unsaid", "bad_first"])),
    st.builds(Spoil, st.just("html"), status=st.just(200)),
    st.builds(Spoil, st.sampled_from(["cut", "reset"]), at=st.floats(0.0, 0.005)),
    st.builds(Spoil, st.just("coding"), st.sampled_from([b"gzip", b"deflate"])),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(sorted(STREAMED)), spoil=unreadable)
@example(path="/api/chat", spoil=Spoil("one_line"))
@example(path="/v1/chat/completions", spoil=Spoil("reset", at=0.0))
def test_a_stream_whose_first_item_comes_unreadable_is_charged_its_prompt(
    hostile: tuple[Gateway, HostileProxy], path: str, spoil: Spoil
) -> None:
    """A whole answer lost on the way is charged its prompt, estimated: Ollama wrote it, so it
    did the work. A stream whose first item came and could not be read (every line run into
    one, gzip'd unsaid, not UTF-8, broken off or reset partway through it) was charged
    nothing, and its span said ``reported`` for counts nobody reported."""
    gw, proxy = hostile
    proxy.spoil = spoil
    body = {"model": f"m{next(models)}", "stream": True, **ROUTES[path]}
    reply = gw.client.post(path, json=body, timeout=20)
    check_answer(path, True, reply)
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    if reply.status_code == 502:  # reset before its head was read: no answer began
        return
    assert (span.status, span.error_type) == ("error", "stream_error")
    assert span.token_source == "estimated"
    assert span.input_tokens == 9  # the prompt's 33 characters, about four a token
    assert span.cost_total > 0
    assert span.ttft_ns is None  # no item of it was read: no first token to time


CALLS = [(path, stream) for path in sorted(ROUTES) for stream in (False, True)]
CALLS = [(path, stream) for path, stream in CALLS if path in STREAMED or not stream]


@pytest.mark.parametrize(("path", "stream"), CALLS)
def test_an_answer_that_trickles_a_byte_at_a_time_runs_out_of_time_on_every_route(
    serve_on: Callable[..., Gateway], sqlite_url: str, path: str, stream: bool
) -> None:
    """A byte every 0.1 s, never an item whole (the native routes' case is in
    ``test_lying_upstream``): each route gives up after OMETER_UPSTREAM_TIMEOUT, answers a
    timeout in its own format, and leaves one timeout span, while the server drips on."""
    server = dripping(b" ", lambda _: b"{}\n")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        gw = serve_on(url, sqlite_url, config={"upstream_timeout": 1, "retries": 0})
        body: dict[str, Any] = {"model": "m", **ROUTES[path]}
        if path in STREAMED:
            body["stream"] = stream
        reply = gw.client.post(path, json=body, timeout=DRIP_S - 2)
        assert reply.status_code == (200 if stream else 504), reply.text
        check_answer(path, stream, reply)
        (span,) = gw.ledger.latest(SpanFilter(), 1)
        assert (span.status, span.error_type) == ("error", "timeout")
    finally:
        server.shutdown()
        server.server_close()


HONEST = [(path, stream) for path in sorted(ROUTES) for stream in (False, True)]


def _call(gw: Gateway, path: str, stream: bool, model: str) -> None:
    body: dict[str, Any] = {"model": model, **ROUTES[path]}
    if path in STREAMED:
        body["stream"] = stream and path in STREAMED
    gw.client.post(path, json=body, timeout=20)


def _kept(span: Any) -> tuple[object, ...]:
    return (span.status, span.input_tokens, span.output_tokens, span.token_source,
            span.cost_total)  # fmt: skip


@pytest.fixture
def alone(hostile: tuple[Gateway, HostileProxy]) -> dict[tuple[str, bool], tuple[object, ...]]:
    """What each honest call leaves alone on the test's gateway, made once for all its
    examples (made again for each, its 16 calls one after another were most of the test's
    time). A spoiled example that changed what an honest call leaves after it shows all the
    same: the honest calls of every later example are held to these."""
    gw, _ = hostile
    kept = {}
    for path, stream in HONEST:
        _call(gw, path, stream, f"m{next(models)}")
        (span,) = gw.ledger.latest(SpanFilter(), 1)
        kept[path, stream] = _kept(span)
    return kept


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    bad=st.lists(
        st.tuples(st.sampled_from(sorted(ROUTES)), st.booleans(), spoils), min_size=1, max_size=6
    )
)
@example(bad=[("/v1/chat/completions", False, Spoil("figures", b"9223372036854775808"))] * 3)
def test_spoiled_answers_cost_no_honest_caller_beside_them_its_span(
    hostile: tuple[Gateway, HostileProxy],
    alone: dict[tuple[str, bool], tuple[object, ...]],
    bad: list[tuple[str, bool, Spoil]],
) -> None:
    """Spoiled answers on every route at once with an honest call on each route, so their
    spans share the write-behind's batches: each honest call keeps the span an honest call
    alone leaves (its tokens, cost and source), and every call leaves one span."""
    gw, proxy = hostile
    before = gw.ledger.count()
    calls = [(path, stream, f"m{next(models)}") for path, stream in HONEST]
    named = {model: (path, stream) for path, stream, model in calls}
    for path, stream, spoil in bad:
        model = f"m{next(models)}"
        proxy.by_model[model] = spoil
        calls.append((path, stream, model))
    with ThreadPoolExecutor(len(calls)) as pool:
        list(pool.map(lambda c: _call(gw, *c), calls))
    assert gw.ledger.count() == before + len(calls)
    spans = gw.ledger.latest(SpanFilter(), len(calls))
    for span in spans:
        check_span(span)
        if span.request_model in named:
            assert _kept(span) == alone[named[span.request_model]], span
    assert {s.request_model for s in spans} == {model for _, _, model in calls}


class KeptAliveOnly(_Listener):
    """A loopback server that answers 200 to a stream and then sends only ``frame`` (a
    keep-alive comment, an empty item) every 0.1 s, for :data:`DRIP_S` or until the caller
    leaves."""

    def __init__(self, frame: bytes, media: bytes = b"text/event-stream") -> None:
        self.frame, self.media = frame, media
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\nconnection: close\r\n" % self.media
            conn.sendall(head + b"\r\n")
            for _ in range(DRIP_S * 10):
                conn.sendall(self.frame)
                time.sleep(0.1)


_SSE, _NDJSON = b"text/event-stream", b"application/x-ndjson"
_DRIPS = [
    *(
        (path, frame, _SSE)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses")
        for frame in (b": keep-alive\n\n", b"event: ping\n\n", b"\n\n", b"data: {}\n\n")
    ),
    *(
        (path, frame, _NDJSON)
        for path in ("/api/chat", "/api/generate")
        for frame in (b"\n", b"{}\n", b" { }\r\n")
    ),
]


@pytest.mark.parametrize(("path", "frame", "media"), _DRIPS)
def test_what_carries_no_item_alone_runs_out_of_time(
    serve_on: Callable[..., Gateway], sqlite_url: str, path: str, frame: bytes, media: bytes
) -> None:
    """An SSE comment (or an event with no data, or ``data: {}``) and an NDJSON item with
    nothing in it (a blank line, ``{}``) are no item of the answer: the gateway relays them
    and reads nothing in them. Sent every 0.1 s, they kept the call, its slot and its caller
    waiting for as long as the server sent them (ended by the server: a stream_error), past
    OMETER_UPSTREAM_TIMEOUT: now no item that carries data in that time is a timeout."""
    server = KeptAliveOnly(frame, media)
    try:
        gw = serve_on(server.url, sqlite_url, config={"upstream_timeout": 1, "retries": 0})
        body = {"model": "m", "stream": True, **ROUTES[path]}
        reply = gw.client.post(path, json=body, timeout=DRIP_S * 2)
        assert reply.status_code == 200
        check_answer(path, True, reply)
        (span,) = gw.ledger.latest(SpanFilter(), 1)
        assert (span.status, span.error_type) == ("error", "timeout")
    finally:
        server.listener.close()
