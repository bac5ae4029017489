"""An upstream answer's head that no answer can carry as it came: the caller gets one all the same.

Found by attack, each time with the span written and the caller handed no answer it can read:

- aiohttp reads any three digits as a status, and the gateway passed a 600 or a 999 on as
  it came (Ollama's own error answer, relayed); uvicorn has no status line for it and raised
  as it began the answer: a closed connection, and a traceback in the log. A 101 passed
  through told the caller its connection was switched to another protocol. Neither is an
  answer: a 502, once, never sent again.
- aiohttp reads header values as UTF-8, and a ``Content-Type`` with a byte that is not
  (Latin-1 text, a stray byte) was text no answer can carry: the gateway's own 500, plain
  text, for Ollama's answer or its refusal. It is passed on byte for byte.
- A passed-through answer's headers were kept by name, so a header given twice (two
  ``Set-Cookie``, as a proxy in front of Ollama sends for its session) reached the caller
  once, the last. Each is passed on as often as it came.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from tests._raw_http import RawServer
from tests.gateway.conftest import Gateway

CALLS = {
    "/api/chat": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/api/show": {"model": "m"},
}


def answer(
    status: int, content_type: bytes = b"application/json", body: bytes = b"", more: bytes = b""
) -> bytes:
    body = body or b'{"error": "something odd"}'
    # RawServer hangs up after each answer, and says so: unsaid, the gateway kept the
    # connection for the next example, whose request could meet the hang-up (a 502).
    head = b"HTTP/1.1 %d Odd\r\nconnection: close\r\ncontent-type: %s\r\n%s" % (
        status,
        content_type,
        more,
    )
    return head + b"content-length: %d\r\n\r\n%s" % (len(body), body)


def exchange(url: str, path: str, body: dict[str, Any]) -> tuple[int, bytes, bytes]:
    """The status, head and body of the answer, read off the socket: a server that fails to
    write its status line closes the connection, which an HTTP client would only retry; and
    an HTTP client reads a header's bytes each its own way."""
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
    return int(head.split()[1]), head, content


def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, _, content = exchange(url, path, body)
    return status, json.loads(content)


@pytest.fixture
def scripted(
    serve_on: Callable[..., Gateway], sqlite_url: str
) -> Iterator[Callable[..., tuple[Gateway, Any]]]:
    """Gateways (a real server: only it writes status lines) before a scripted upstream:
    ``scripted(**config)``."""
    servers: list[RawServer] = []

    def start(**config: Any) -> tuple[Gateway, Any]:
        server = RawServer(lambda: answer(server.status, server.type, server.body, server.more))  # type: ignore[attr-defined]
        server.type, server.body, server.more = b"application/json", b"", b""  # type: ignore[attr-defined]
        servers.append(server)
        return serve_on(server.url, sqlite_url, config=config), server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def odd(scripted: Callable[..., tuple[Gateway, Any]]) -> tuple[Gateway, Any]:
    return scripted()


@pytest.fixture
def refusing(scripted: Callable[..., tuple[Gateway, Any]]) -> tuple[Gateway, Any]:
    """Ollama's refusals not sent again, nor opening a breaker across examples."""
    return scripted(retries=0, breaker_failures=1000)


@pytest.mark.parametrize("status", [101, 600, 700, 999])
@pytest.mark.parametrize("path", sorted(CALLS))
def test_a_status_no_answer_has_is_a_502_with_one_span_never_passed_on(
    odd: tuple[Gateway, Any], path: str, status: int
) -> None:
    gw, server = odd
    server.status = status
    got, body = post(gw.url, path, {**CALLS[path], "model": f"m{status}", "stream": False})
    assert got == 502, body
    error = body["error"]["message"] if path.startswith("/v1/") else body["error"]
    assert f"its status {status} is not an answer's (200 to 599)" in error
    sent = [line for line in server.asked if not line.startswith(b"GET /api/version ")]
    assert sent == [f"POST {path} HTTP/1.1".encode()], server.asked  # taken: never sent again
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


FINAL = {"model": "m", "response": "hi", "done": True, "prompt_eval_count": 3, "eval_count": 1}
# What HTTP lets a header value hold: visible ASCII, spaces and tabs inside, and obs-text
# (bytes 0x80-0xFF: UTF-8 text, Latin-1, or nonsense), which no decoding need accept.
CONTENT_TYPES = st.binary(min_size=1, max_size=24).map(
    lambda raw: b"application/json; x=" + bytes(b for b in raw if b >= 0x21 and b != 0x7F)
) | st.sampled_from([b"application/json; charset=\xff", b"application/\x80", "x/\u00e9".encode()])


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content_type=CONTENT_TYPES,
    status=st.sampled_from([200, 429, 500]),
    stream=st.booleans(),
    path=st.sampled_from(["/api/generate", "/api/show"]),
)
def test_any_content_type_ollama_sends_is_passed_on_as_it_came(
    refusing: tuple[Gateway, Any], content_type: bytes, status: int, stream: bool, path: str
) -> None:
    gw, server = refusing
    server.status, server.type = status, content_type
    server.body = json.dumps(FINAL).encode() + b"\n" if status == 200 else b""
    before = gw.ledger.count()
    got, head, _ = exchange(gw.url, path, {"model": "m", "prompt": "hi", "stream": stream})
    assert got == status, head
    types = [
        line[13:].strip() for line in head.split(b"\r\n") if line[:13].lower() == b"content-type:"
    ]
    assert types == [content_type]
    assert gw.ledger.count() - before == (0 if path == "/api/show" else 1)


def test_a_header_given_more_than_once_is_passed_through_as_often_as_it_came(
    odd: tuple[Gateway, Any],
) -> None:
    gw, server = odd
    server.status, server.body = 200, b'{"models": []}'
    server.more = b"Set-Cookie: a=1\r\nVary: Accept\r\nSet-Cookie: b=2\r\nvary: Origin\r\n"
    got, head, _ = exchange(gw.url, "/api/show", {"model": "m"})
    assert got == 200, head
    lines = [line.lower() for line in head.split(b"\r\n")[1:]]
    assert [line for line in lines if line.startswith((b"set-cookie:", b"vary:"))] == [
        b"set-cookie: a=1",
        b"vary: accept",
        b"set-cookie: b=2",
        b"vary: origin",
    ]


class _Recording(RawServer):
    """Answers as ``odd`` does, a cookie set on each answer; keeps each request's head."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__(lambda: b"")

    def reply(self, head: bytes, body: bytes) -> bytes:
        self.heads.append(head)
        cookie = b"Set-Cookie: session=caller%d; Path=/\r\n" % len(self.heads)
        return answer(200, body=json.dumps(FINAL).encode(), more=cookie)


def test_a_cookie_set_on_one_callers_answer_is_never_sent_on_anothers_call(
    serve_on: Callable[..., Gateway], sqlite_url: str
) -> None:
    """The pool's session kept the cookies answers set (a proxy's session before Ollama), and
    sent them with every later call to that server: one caller's session on everyone's calls.
    Each call goes with the headers its caller sent, and no others (a cookie of its own
    included: the gateway is no browser)."""
    server = _Recording()
    try:
        # By name: aiohttp's jar takes no cookie from a server known by its IP address.
        gw = serve_on(server.url.replace("127.0.0.1", "localhost"), sqlite_url)
        for tenant in ("alice", "bob"):
            got, head, _ = exchange(
                gw.url, "/api/generate", {"model": "m", "prompt": tenant, "stream": False}
            )
            assert got == 200, head
    finally:
        server.close()
    assert len(server.heads) == 2
    for head in server.heads:
        assert b"cookie:" not in head.lower()
