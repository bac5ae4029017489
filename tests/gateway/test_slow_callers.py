"""Callers too slow to be served: one that stops reading its answer, one whose body never ends.

Each would hold what every caller needs (a slot on Ollama, a connection) for as long as it
liked; the gateway hangs up on them after a bound (shortened here), and writes their spans.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ollama_meter.gateway import _memory, _server
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import DEFAULT_MODELS, OllamaEmulator
from ollama_meter.upstream import _pooled
from tests._raw_http import RawServer
from tests.gateway.conftest import Gateway

LONG = dataclasses.replace(DEFAULT_MODELS[0], reply_tokens=200_000)
"""A model whose streamed answer (megabytes) is more than the sockets on the way hold."""


def _until(condition: Callable[[], object], what: str) -> None:
    for _ in range(1200):
        if condition():
            return
        threading.Event().wait(0.025)
    raise AssertionError(f"still not {what} after 30 s")


def _port(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def _raw_request(gateway: Gateway, body: dict[str, Any], path: str = "/api/chat") -> socket.socket:
    """A connection that has sent ``body`` to ``path`` and reads nothing of the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills at once
    sock.connect(("127.0.0.1", _port(gateway)))
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


@pytest.fixture
def long_emulator() -> Any:
    with OllamaEmulator(models=[LONG]) as emu:
        yield emu


def test_a_caller_that_stops_reading_its_stream_is_hung_up_on_and_its_slot_goes_to_the_next(
    serve_on: Callable[..., Gateway],
    sqlite_url: str,
    long_emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_server, "STALLED_S", 0.5)
    gateway = serve_on(long_emulator.url, sqlite_url, config={"slots": 1})
    chat = {"model": LONG.name, "messages": [{"role": "user", "content": "hi"}]}
    stalled = _raw_request(gateway, {**chat, "stream": True})
    try:
        _until(lambda: long_emulator.in_flight == 1, "streaming")
        # The only slot is the stalled caller's until the gateway hangs up on it.
        answer = httpx.post(
            f"{gateway.url}/api/chat",
            json={**chat, "stream": False, "options": {"num_predict": 3}},
            timeout=90,  # the sockets on the way fill, then the gateway waits STALLED_S: slow under load
        )
        assert answer.status_code == 200
        assert answer.json()["eval_count"] == 3
        _until(lambda: len(gateway.ledger.latest(SpanFilter(), 10)) == 2, "both recorded")
        # Ollama stopped computing: the gateway hung up on it, or (a reply small enough for
        # the sockets on the way) it had written all of it; either way it serves nothing now.
        _until(lambda: long_emulator.in_flight == 0, "stopped")
        assert long_emulator.hangups <= 1
    finally:
        stalled.close()
    first, second = sorted(gateway.ledger.latest(SpanFilter(), 10), key=lambda s: s.started_at)
    assert (first.status, first.error_type, first.stream) == ("client_abort", "client_abort", True)
    assert (second.status, second.output_tokens) == ("ok", 3)


def test_a_caller_that_reads_slowly_gets_its_whole_answer(
    serve_on: Callable[..., Gateway],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_server, "STALLED_S", 1.0)
    model = dataclasses.replace(LONG, reply_tokens=20_000)
    with OllamaEmulator(models=[model]) as emu:
        gateway = serve_on(emu.url, sqlite_url, config={"slots": 1})
        chat = {"model": model.name, "messages": [{"role": "user", "content": "hi"}]}
        sock = _raw_request(gateway, {**chat, "stream": True})
        received = bytearray()
        with sock:
            while not received.endswith(b"0\r\n\r\n"):  # the chunked body's end
                threading.Event().wait(0.005)  # slower than the answer comes: writes wait
                part = sock.recv(4096)
                assert part, "the gateway hung up on a caller that was reading"
                received += part
        # (a chunk holds the items the gateway read together: lines, whatever the chunks)
        lines = [line for line in received.replace(b"\r\n", b"\n").split(b"\n") if line[:1] == b"{"]
        assert json.loads(lines[-1])["done"] is True
        (span,) = gateway.ledger.latest(SpanFilter(), 10)
        assert (span.status, span.output_tokens) == ("ok", 20_000)


def _answer(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    sock.settimeout(30)
    received = b""
    while part := sock.recv(65536):
        received += part
    return received


def test_a_body_that_trickles_in_is_answered_408_and_its_span_written(
    serve_on: Callable[..., Gateway],
    sqlite_url: str,
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_memory, "BODY_S", 0.5)
    gateway = serve_on(emulator.url, sqlite_url)
    with socket.create_connection(("127.0.0.1", _port(gateway))) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nhost: x\r\nx-ometer-department: sales\r\n"
            b"content-length: 100\r\n\r\n{"  # and the rest a byte every now and then
        )
        answer = _answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {
        "error": "the request body did not arrive in time (1 of 100 bytes in 0.5 s; a body "
        "may take 0.5 s, and 1 s more per 64 KiB); send it at once"
    }
    (span,) = gateway.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.http_status, span.department) == (
        "error",
        "bad_request",
        408,
        "sales",
    )
    assert emulator.requests == []


def test_a_head_that_trickles_in_is_answered_408_and_a_silent_connection_closed(
    serve_on: Callable[..., Gateway],
    sqlite_url: str,
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_server, "HEAD_S", 0.5)
    gateway = serve_on(emulator.url, sqlite_url)
    with (
        socket.create_connection(("127.0.0.1", _port(gateway))) as silent,
        socket.create_connection(("127.0.0.1", _port(gateway))) as slow,
    ):
        slow.sendall(b"POST /api/chat HTTP/1.1\r\nhost: x\r\nx-ometer-dep")
        assert _answer(silent) == b""  # it asked nothing: no answer to read as another's
        head, _, body = _answer(slow).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {
        "error": "the request's headers did not arrive within 0.5 s; send them at once"
    }
    with socket.create_connection(("127.0.0.1", _port(gateway))) as kept_alive:
        kept_alive.sendall(b"GET /api/version HTTP/1.1\r\nhost: x\r\n\r\nGET /api/v")
        answers = _answer(kept_alive)
    assert answers.startswith(b"HTTP/1.1 200 ")  # the first request's, then the next one's:
    assert answers.count(b"HTTP/1.1 408 ") == 1
    assert gateway.client.get("/api/version").status_code == 200


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /no/such/route HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n",  # 404
        b"POST /api/pull HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{",  # 403
        b"GET /api/version HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n",  # never read
    ],
)
def test_an_answer_given_before_the_body_ended_closes_the_connection(
    sqlite_gateway: Gateway, request_head: bytes
) -> None:
    """The rest of such a body was read and thrown away with no time limit (each byte put off
    the idle connection's own): one byte now and then held a connection for ever."""
    with socket.create_connection(("127.0.0.1", _port(sqlite_gateway))) as sock:
        sock.sendall(request_head)
        sock.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        try:
            sock.sendall(b"x")  # more of the body, after its answer
            head += _answer(sock)  # to the end: the gateway closed the connection
        except ConnectionResetError:  # closed already, the byte unread: as closed
            pass
    assert b"\r\nconnection: close\r\n" in head.lower()
    assert sqlite_gateway.client.get("/api/version").status_code == 200


def _streamed(items: list[dict[str, Any]]) -> bytes:
    """Ollama's 200 with ``items`` as one chunked NDJSON body, whole."""
    body = b"".join(json.dumps(item).encode() + b"\n" for item in items)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
    return head + b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@pytest.mark.parametrize("hangup", ["the caller's reset", "the gateway's, on a stalled caller"])
def test_a_caller_gone_mid_stream_is_an_abort_never_ok(
    serve_on: Callable[..., Gateway],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    hangup: str,
) -> None:
    """A write into a connection that is gone returns as if it was sent (ASGI 2.3), and the
    hang-up reached the relay as a cancellation, later: anyio puts it off while the relay's wait
    on Ollama is already over, as it is for as long as more of the answer is there to read. The
    relay went on through the answer (the sockets from Ollama hold megabytes) to its end: the
    call was recorded ok, an answer nobody got, computed whole for nobody."""
    stalls = hangup.endswith("stalled caller")
    monkeypatch.setattr(_server, "STALLED_S", 1.0 if stalls else 60.0)
    words = [{"model": "m", "message": {"role": "assistant", "content": "word "}, "done": False}]
    final = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True}
    final |= {"done_reason": "stop", "prompt_eval_count": 3, "eval_count": 100_000}
    # ~8 MB: more than the sockets to the caller hold (4 MB at most for a send buffer)
    upstream = RawServer(lambda: _streamed(words * 100_000 + [final]))
    try:
        gateway = serve_on(upstream.url, sqlite_url)
        caller = _raw_request(
            gateway, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
        with caller:
            threading.Event().wait(1.0)  # the sockets on the way fill; the relay waits on them
            if not stalls:
                assert gateway.ledger.latest(SpanFilter(), 10) == [], "the answer got through"
                linger = struct.pack("ii", 1, 0)  # closed with a reset: as on a crash
                caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                caller.close()
            _until(lambda: gateway.ledger.latest(SpanFilter(), 10), "recorded")
    finally:
        upstream.close()
    (span,) = gateway.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.stream) == ("client_abort", "client_abort", True)


def test_a_caller_gone_from_a_whole_answer_relayed_as_it_comes_is_an_abort_not_ok(
    serve_on: Callable[..., Gateway], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a whole answer too large to hold (an embedding batch), relayed as it comes."""
    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 2_000)
    vectors = [[0.123456789] * 4096] * 120  # ~6 MB: more than the sockets to the caller hold
    body = json.dumps({"model": "m", "embeddings": vectors, "prompt_eval_count": 3}).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    upstream = RawServer(lambda: head + b"content-length: %d\r\n\r\n" % len(body) + body)
    try:
        gateway = serve_on(upstream.url, sqlite_url)
        with _raw_request(gateway, {"model": "m", "input": ["hi"] * 120}, "/api/embed") as caller:
            threading.Event().wait(1.0)  # the sockets on the way fill; the relay waits on them
            assert gateway.ledger.latest(SpanFilter(), 10) == [], "the answer got through"
            caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            caller.close()
            _until(lambda: gateway.ledger.latest(SpanFilter(), 10), "recorded")
    finally:
        upstream.close()
    (span,) = gateway.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type) == ("client_abort", "client_abort")


def test_a_caller_reading_slowly_is_not_taken_for_one_that_stopped(
    serve_on: Callable[..., Gateway], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller reading some KB a second, slower than the kernel's send buffer moves on: the
    kernel takes more from the gateway only once a good part of that buffer is free, so the
    bytes the gateway still held for it stayed the same for many seconds though it read, and
    it was hung up on as one that took no byte. What the kernel holds unsent counts too."""
    monkeypatch.setattr(_server, "STALLED_S", 1.0)
    model = dataclasses.replace(LONG, reply_tokens=40_000)  # some 5 MB: more than the sockets hold
    with OllamaEmulator(models=[model]) as emu:
        _read_slowly_then_at_once(serve_on(emu.url, sqlite_url), model.name, model.reply_tokens)


def _read_slowly_then_at_once(gateway: Gateway, model: str, tokens: int) -> None:
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    sock = _raw_request(gateway, chat)
    received = bytearray()
    with sock:
        sock.settimeout(30)
        for _ in range(60):  # 3 s at 20 KB/s, where the kernel's buffer holds megabytes
            part = sock.recv(1024)
            assert part, "the gateway hung up on a caller that was reading"
            received += part
            threading.Event().wait(0.05)
        while not received.endswith(b"0\r\n\r\n"):  # the rest at once
            part = sock.recv(1 << 20)
            assert part, "the gateway hung up on a caller that was reading"
            received += part
    (span,) = gateway.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.output_tokens) == ("ok", tokens)
