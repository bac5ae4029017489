"""A call that offers to upgrade the connection is served as HTTP/1.1, its body read.

``curl --http2`` on an ``http://`` URL, Java's ``HttpClient`` and Spring's ``RestClient`` (Spring
AI's Ollama client) send ``Connection: Upgrade, HTTP2-Settings`` and ``Upgrade: h2c`` with every
POST. Ollama ignores the offer, as RFC 9110 §7.8 lets a server. httptools stopped at the
head instead: the app was given the call with no body, a 400 ("the request body must be a
JSON object") and an error span for a call Ollama would have run, with two uvicorn warnings
telling the operator to install a WebSocket library.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from tests.gateway.conftest import Gateway
from tests.gateway.test_unparsable import _answers

H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
OFFERS = [H2C, b"Connection: upgrade\r\nUpgrade: websocket\r\n", b"Connection: keep-alive, Upgrade\r\nUpgrade: foo/2\r\n"]  # fmt: skip
CALLS = {
    "/api/generate": {"model": "llama3.1:8b", "prompt": "hi", "stream": False},
    "/api/chat": {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/chat/completions": {
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    },
}


def _request(path: str, offer: bytes, *, chunked: bool) -> bytes:
    body = json.dumps(CALLS[path]).encode()
    if chunked:
        framing, body = (
            b"Transfer-Encoding: chunked\r\n",
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
        )
    else:
        framing = b"Content-Length: %d\r\n" % len(body)
    return b"POST %s HTTP/1.1\r\nHost: localhost\r\n%s%s\r\n%s" % (
        path.encode(),
        offer,
        framing,
        body,
    )


def _sent(gw: Gateway, pieces: list[bytes]) -> bytes:
    """What the gateway answers ``pieces``, sent one after the other (each its own read),
    the connection closed by the last request's ``Connection: close``."""
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for piece in pieces:
            sock.sendall(piece)
            threading.Event().wait(0.05)  # (each its own read, mostly: not needed to pass)
        received = b""
        while part := sock.recv(65536):
            received += part
    return received


CLOSING = b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"  # fmt: skip


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(sorted(CALLS)),
    offer=st.sampled_from(OFFERS),
    chunked=st.booleans(),
    cut=st.integers(0, 400),
)
def test_a_call_offering_an_upgrade_is_run_as_http_1_1(
    gateway: Gateway,
    caplog: pytest.LogCaptureFixture,
    path: str,
    offer: bytes,
    chunked: bool,
    cut: int,
) -> None:
    before = gateway.ledger.count()
    request = _request(path, offer, chunked=chunked)
    last = json.dumps(CALLS["/api/generate"]).encode()
    cut = min(cut, len(request))  # the offer's head and body in two reads, anywhere
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's own: it does not propagate
    uvicorn_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            received = _sent(gateway, [request[:cut], request[cut:] + CLOSING % (len(last), last)])
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    answers = _answers(received)
    assert [head.status_code for head, _ in answers] == [200, 200], received[-400:]
    (_, body), _ = answers
    if path == "/v1/chat/completions":
        assert body.rstrip().endswith(b"data: [DONE]")
    else:
        assert json.loads(body.splitlines()[-1])["done"] is True
    spans = gateway.ledger.latest(SpanFilter(), 10)[: gateway.ledger.count() - before]
    assert sorted(s.status for s in spans) == ["ok", "ok"]
    ids = {dict(head.headers)[b"x-ometer-span-id"].decode() for head, _ in answers}
    assert ids == {s.id for s in spans}
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [line for line in said if "upgrade" in line.lower() or "WebSocket" in line]
