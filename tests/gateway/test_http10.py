"""An HTTP/1.0 caller is answered in HTTP/1.0's framing, as Ollama (Go's server) answers it.

HTTP/1.0 has no chunked encoding and no interim answers (RFC 9112 §6.1: no
``Transfer-Encoding`` to a request that is not HTTP/1.1; RFC 9110 §10.1.1: a 1.0 request's
``Expect: 100-continue`` is ignored). uvicorn chunked every streamed answer whatever the
request said, and sent ``100 Continue`` to a 1.0 caller, which reads it as the answer: a 1.0
client read the chunk sizes as part of the stream (``31e`` before the first line), or took
``100`` for the call's status. A streamed answer to a 1.0 request is its body as it comes,
its end the connection's close; the call's span is the one a 1.1 caller's would be.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import httpx
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator, expected_reply
from tests.gateway.conftest import Gateway, left_mid_stream
from tests.gateway.test_security import raw

HI = [{"role": "user", "content": "hi"}]
CHAT = json.dumps({"model": "llama3.1:8b", "messages": HI})
EXPECTED = expected_reply("llama3.1:8b", HI)


def _answer(gw: Gateway, request: bytes) -> tuple[bytes, list[bytes], bytes]:
    """The status line, the headers and the body of the gateway's answer to ``request``,
    read until the gateway closes the connection."""
    head, _, body = raw(gw.url, request, timeout=60).partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    return status, [h.lower() for h in headers], body


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"])
def test_a_stream_to_an_http10_caller_is_its_lines_closed_by_the_connection(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, expect: bytes
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    request = (
        b"POST /api/chat HTTP/1.0\r\nContent-Type: application/json\r\n"
        + expect
        + f"Content-Length: {len(CHAT)}\r\n\r\n{CHAT}".encode()
    )
    status, headers, body = _answer(gw, request)
    assert status.split(b" ")[1] == b"200"
    assert not any(h.startswith(b"transfer-encoding:") for h in headers), headers
    assert b"connection: close" in headers
    lines = [json.loads(line) for line in body.splitlines()]  # every line JSON: no chunk sizes
    assert len(lines) > 2 and lines[-1]["done"] is True
    assert "".join(line["message"]["content"] for line in lines) == EXPECTED.content
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.stream, span.output_tokens) == ("ok", True, EXPECTED.output_tokens)


def test_an_http11_caller_still_gets_its_stream_chunked(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        + f"Content-Length: {len(CHAT)}\r\n\r\n{CHAT}".encode()
    )
    status, headers, body = _answer(gw, request)
    assert status.split(b" ")[1] == b"200"
    assert b"transfer-encoding: chunked" in headers
    assert body.endswith(b"\r\n0\r\n\r\n")


@pytest.mark.parametrize("path", [b"/api/tags", b"/api/version"])
def test_an_answer_passed_through_to_an_http10_caller_is_its_body(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, path: bytes
) -> None:
    """Passed on as Ollama's answer comes (its length unsaid), so framed by the close too."""
    gw = serve_on(emulator.url, sqlite_url)
    status, headers, body = _answer(gw, b"GET " + path + b" HTTP/1.0\r\n\r\n")
    assert status.split(b" ")[1] == b"200"
    assert not any(h.startswith(b"transfer-encoding:") for h in headers), headers
    assert json.loads(body) == emulator_answer(emulator, path)


def emulator_answer(emulator: OllamaEmulator, path: bytes) -> object:
    """What Ollama itself answers a GET of ``path``."""
    return httpx.get(emulator.url + path.decode(), timeout=60).json()


def test_an_http10_caller_hanging_up_mid_stream_stops_ollama_and_its_span_is_client_abort(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.token_latency = 0.2  # the 13 tokens take 2.6 s: it notices long before the end
    try:
        host, port = sqlite_gateway.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(
                f"POST /api/chat HTTP/1.0\r\nContent-Length: {len(CHAT)}\r\n\r\n{CHAT}".encode()
            )
            got = b""
            while b'"done":false}\n' not in got.partition(b"\r\n\r\n")[2]:  # its first line
                got += sock.recv(65536)
        span = left_mid_stream(sqlite_gateway, emulator)
    finally:
        emulator.hurry()
    assert span.stream is True and span.output_tokens < EXPECTED.output_tokens
