"""Bytes the server cannot parse, on a connection with a request still to be answered.

uvicorn answered them itself, at once: a plain-text 400 written onto the connection and the
connection closed. Behind a request being answered that cut its answer, or wrote the 400
into the middle of a stream (its framing broken); ahead of an answer not yet begun, the
client read the 400 as that request's answer, while the call ran at Ollama and was recorded
as its caller's hang-up. A request's own body that broke (a bad chunk size) was a hang-up
too, its span a ``client_abort`` 499, its answer no error the client could read.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.gateway import _server
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}


def _post(path: str, body: bytes, *more: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n".encode()
    return head + b"".join(more) + b"content-length: %d\r\n\r\n" % len(body) + body


def _exchange(gateway: Gateway, first: bytes, then: bytes = b"", *, after: float = 0.0) -> bytes:
    """What the gateway sends on one connection, to its end, for ``first``, then ``then``
    (``after`` seconds later: once the answer has begun, say)."""
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(first if after else first + then)
        if after:
            threading.Event().wait(after)
            with contextlib.suppress(OSError):  # closed already, as after a whole answer
                sock.sendall(then)
        received = b""
        try:
            while part := sock.recv(65536):
                received += part
        except ConnectionResetError:  # closed with bytes it did not read
            pass
    return received


def _answers(received: bytes) -> list[tuple[h11.Response, bytes]]:
    """The answers in ``received``, each checked for its framing as a client reads it."""
    answers = []
    while received:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
        client.receive_data(received)
        head, body = None, b""
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"an answer broken off or framed wrong: {event!r}")
        assert head is not None
        answers.append((head, body))
        received = client.trailing_data[0]
    return answers


def _header(answer: h11.Response, name: bytes) -> str:
    return dict(answer.headers).get(name, b"").decode()


def _whole(body: bytes, *, stream: bool) -> dict[str, Any]:
    if not stream:
        return dict(json.loads(body))
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert all("error" not in line for line in lines), lines
    return dict(lines[-1])


NOT_HTTP = st.binary(min_size=1, max_size=200).map(lambda junk: b"\x00" + junk)
"""Bytes no HTTP request begins with (a method is a token: no NUL)."""


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=st.booleans(), junk=NOT_HTTP, mid_answer=st.booleans())
def test_bytes_it_cannot_parse_never_cut_or_precede_the_answer_to_an_earlier_request(
    sqlite_gateway: Gateway, emulator: OllamaEmulator, stream: bool, junk: bytes, mid_answer: bool
) -> None:
    emulator.token_latency = 0.02 if mid_answer else 0.0
    before = len(sqlite_gateway.ledger.latest(SpanFilter(), 1000))
    body = json.dumps({**CHAT, "stream": stream}).encode()
    received = _exchange(
        sqlite_gateway, _post("/api/chat", body), junk, after=0.1 if mid_answer else 0.0
    )
    (answer, reply), *after = _answers(received)
    assert after == []  # the junk gets no answer of its own: the connection closes
    assert answer.status_code == 200
    assert _whole(reply, stream=stream)["done"] is True
    spans = sqlite_gateway.ledger.latest(SpanFilter(), 1000)
    assert len(spans) == before + 1
    assert (spans[0].id, spans[0].status) == (_header(answer, b"x-ometer-span-id"), "ok")


@pytest.mark.parametrize("then", ["too large a head", "a head that never ends"])
def test_the_servers_own_refusal_of_the_next_request_waits_for_the_stream_ahead_of_it(
    sqlite_gateway: Gateway,
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    then: str,
) -> None:
    """A 431 or a 408 for a request pipelined behind a stream was written into the stream."""
    monkeypatch.setattr(_server, "HEAD_S", 0.2)
    emulator.token_latency = 0.1  # 13 words: well past HEAD_S
    body = json.dumps({**CHAT, "stream": True}).encode()
    second = (
        b"GET /api/version HTTP/1.1\r\nhost: 127.0.0.1\r\nx-pad: " + b"x" * 70_000 + b"\r\n\r\n"
        if then == "too large a head"
        else b"GET /api/version HTTP/1.1\r\nhost: 127.0"
    )
    received = _exchange(sqlite_gateway, _post("/api/chat", body), second, after=0.1)
    ((answer, reply),) = _answers(received)
    assert answer.status_code == 200
    assert _whole(reply, stream=True)["done"] is True
    (span,) = sqlite_gateway.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.output_tokens) == ("ok", 13)


def _chunked(body: bytes, sizes: list[int], broken: int, how: bytes) -> bytes:
    """``body`` in chunks of ``sizes`` (cycled), chunk ``broken``'s size line spoiled by ``how``
    (a byte no hex number has before it, or ``long``: one more than the chunk holds)."""
    chunks, at = [], 0
    while at < len(body):
        size = min(sizes[len(chunks) % len(sizes)], len(body) - at)
        chunks.append((size, body[at : at + size]))
        at += size
    spoiled = broken % len(chunks)
    framed = b""
    for index, (size, data) in enumerate(chunks):
        line = b"%x" % size
        if index == spoiled:
            line = b"%x" % (size + 1) if how == b"long" else how + line
        framed += line + b"\r\n" + data + b"\r\n"
    return framed + b"0\r\n\r\n"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(["/api/chat", "/v1/chat/completions"]),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    broken=st.integers(0, 30),
    how=st.sampled_from([b"z", b"-", b"\x00", b"long"]),
)
def test_a_body_whose_chunks_cannot_be_parsed_is_a_400_in_the_routes_format_with_its_span(
    sqlite_gateway: Gateway,
    emulator: OllamaEmulator,
    path: str,
    sizes: list[int],
    broken: int,
    how: bytes,
) -> None:
    emulator.reset()
    before = len(sqlite_gateway.ledger.latest(SpanFilter(), 1000))
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-ometer-department: sales\r\n"
    body = json.dumps({**CHAT, "stream": False}).encode()
    chunked = (
        head.encode() + b"transfer-encoding: chunked\r\n\r\n" + _chunked(body, sizes, broken, how)
    )
    ((answer, reply),) = _answers(_exchange(sqlite_gateway, chunked))
    assert answer.status_code == 400
    error = json.loads(reply)["error"]
    message = error["message"] if path.startswith("/v1") else error
    assert "chunked encoding" in message
    assert _header(answer, b"connection") == "close"
    spans = sqlite_gateway.ledger.latest(SpanFilter(), 1000)
    assert len(spans) == before + 1
    span = spans[0]
    assert span.id == _header(answer, b"x-ometer-span-id")
    assert (span.status, span.error_type, span.http_status, span.department) == (
        "error",
        "bad_request",
        400,
        "sales",
    )
    assert emulator.requests == []  # nothing reached Ollama


def test_a_blob_upload_whose_chunks_cannot_be_parsed_is_a_400_not_ollama_unreachable(
    serve_on: Any, emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Streamed on to Ollama as it came, the broken body read as Ollama being unreachable:
    a 502 telling the caller to check that Ollama runs."""
    gateway = serve_on(emulator.url, sqlite_url, allow_admin=True)
    head = b"POST /api/blobs/sha256:" + b"a" * 64 + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    upload = head + b"transfer-encoding: chunked\r\n\r\n4\r\nGGUF\r\nzz\r\n"
    ((answer, reply),) = _answers(_exchange(gateway, upload))
    assert answer.status_code == 400
    assert "chunked encoding" in json.loads(reply)["error"]
    assert emulator.blobs == {}
