"""An upstream whose status line names no HTTP status: the caller gets an answer all the same.

Found by attack: aiohttp reads any three digits as a status, and the gateway passed a 600 or
a 999 on as it came (Ollama's own error answer, relayed); uvicorn has no status line for it
and raised as it began the answer. The caller got no answer at all, only a closed connection,
and the log a traceback. Such an answer is no HTTP answer: a 502, once, never sent again.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ollama_meter.ledger import SpanFilter
from tests._raw_http import RawServer
from tests.gateway.conftest import Gateway

CALLS = {
    "/api/chat": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/api/show": {"model": "m"},
}


def answer(status: int) -> bytes:
    body = b'{"error": "something odd"}'
    head = b"HTTP/1.1 %d Odd\r\ncontent-type: application/json\r\n" % status
    return head + b"content-length: %d\r\n\r\n%s" % (len(body), body)


def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The status and JSON of the answer, read off the socket: a server that fails to write
    its status line closes the connection, which an HTTP client would only retry."""
    data = json.dumps(body).encode()
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(
            b"POST %s HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (path.encode(), len(data), data)
        )
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
    assert got, f"{path}: the gateway closed the connection without an answer"
    head, _, content = got.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(content)


@pytest.fixture
def odd(serve_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[tuple[Gateway, Any]]:
    """A gateway (a real server: only it writes status lines) before a scripted upstream."""
    server = RawServer(lambda: answer(server.status))  # type: ignore[attr-defined]
    try:
        yield serve_on(server.url, sqlite_url), server
    finally:
        server.close()


@pytest.mark.parametrize("status", [600, 700, 999])
@pytest.mark.parametrize("path", sorted(CALLS))
def test_a_status_http_does_not_define_is_a_502_with_one_span_never_no_answer(
    odd: tuple[Gateway, Any], path: str, status: int
) -> None:
    gw, server = odd
    server.status = status
    got, body = post(gw.url, path, {**CALLS[path], "model": f"m{status}", "stream": False})
    assert got == 502, body
    error = body["error"]["message"] if path.startswith("/v1/") else body["error"]
    assert f"its status {status} is not an HTTP status" in error
    assert server.calls == 1  # the call was taken: never sent again
    spans = gw.ledger.latest(SpanFilter(), 10)
    if path == "/api/show":  # passed through: no call to meter
        assert spans == []
    else:
        assert [(s.status, s.error_type) for s in spans] == [("error", "stream_error")]


@pytest.mark.parametrize("status", [418, 599])
def test_a_status_http_defines_is_still_relayed_as_it_came(
    odd: tuple[Gateway, Any], status: int
) -> None:
    gw, server = odd
    server.status = status
    got, body = post(gw.url, "/api/chat", {**CALLS["/api/chat"], "stream": False})
    assert (got, body) == (status, {"error": "something odd"})
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.http_status) == ("error", status)
