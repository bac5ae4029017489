"""What the Python API makes of an upstream whose HTTP, not its JSON, misleads it.

Found by attack: the ``ollama`` client transport read every answer that is no HTTP answer
(a bad status line, a TLS server, bytes of nothing) as an unreachable server ("is it
running?"), sent the call twice more for it, each time computed again, and counted it
against the host's circuit; a whole answer whose body broke off (too short for its
``Content-Length``, a chunked body cut short) was sent three times too; and a 200 that
says ``{"error": ...}`` was "ChatResponse.message: Field required", not Ollama's words.
The gateway's transport says the same of the same answers (``tests/gateway/
test_upstream_transport.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollama_meter import AsyncMeteredClient, MeteredClient, UpstreamError
from ollama_meter.ledger import SpanFilter
from ollama_meter.upstream import breaker_for
from tests._raw_http import RawServer

FINAL = {
    "model": "m",
    "message": {"role": "assistant", "content": "hi"},
    "done": True,
    "prompt_eval_count": 7,
    "eval_count": 3,
}
WHOLE = json.dumps(FINAL).encode()
CHUNK = json.dumps({**FINAL, "done": False}).encode() + b"\n"
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"

NOT_HTTP = {  # something answered, in bytes that are no HTTP answer
    "status line": b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
    "a TLS server": b"\x15\x03\x01\x00\x02\x02\x46",  # a TLS alert: "use https://"
    "garbage": b"\x00\x01\x02garbage\r\n\r\n",
}
BROKE_OFF = {  # an HTTP answer began, then its body broke off
    "content-length too long": HEAD + b"content-length: 500\r\n\r\n" + WHOLE,
    "chunked, cut short": HEAD
    + b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(CHUNK), CHUNK),
    "two framings": HEAD + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
}
EXPECTED: dict[str, tuple[str, str]] = {
    **dict.fromkeys(NOT_HTTP, ("stream_error", "is not an HTTP answer")),
    **dict.fromkeys(BROKE_OFF, ("stream_error", "broke off")),
    "an error in a 200": ("stream_error", "Ollama failed while answering: boom"),
}
ANSWERS = {
    **NOT_HTTP,
    **BROKE_OFF,
    "an error in a 200": HEAD + b'content-length: 17\r\n\r\n{"error": "boom"}',
}


class _Raw(RawServer):
    """Answers each request with the raw bytes of ``raw``, then hangs up; counts the calls."""

    def __init__(self) -> None:
        self.raw = b""
        super().__init__(lambda: self.raw)


@pytest.fixture
def raw() -> Iterator[_Raw]:
    server = _Raw()
    try:
        yield server
    finally:
        server.close()


def _chat(client: Any, stream: bool, flavour: str) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if flavour == "sync":
        answer = client.chat(**request)
        if stream:
            list(answer)
        return

    async def ask() -> None:
        answer = await client.chat(**request)
        if stream:
            [part async for part in answer]

    asyncio.run(ask())


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_an_answer_that_is_not_http_is_a_stream_error_once_not_a_server_unreachable(
    sqlite_url: str, raw: _Raw, answer: str
) -> None:
    """Streamed or whole, sync or async: one attempt, one span, the error the gateway gives,
    and the host's circuit not told that nothing answers there."""
    raw.raw = ANSWERS[answer]
    error_type, words = EXPECTED[answer]
    clients = {
        "sync": MeteredClient(raw.url, db_url=sqlite_url, breaker_failures=100),
        "async": AsyncMeteredClient(raw.url, db_url=sqlite_url, breaker_failures=100),
    }
    ledger = clients["sync"].meter.ledger
    for flavour, client in clients.items():
        for stream in (False, True):
            before = raw.calls
            with pytest.raises(UpstreamError) as failed:
                _chat(client, stream, flavour)
            assert (failed.value.error_type, raw.calls - before) == (error_type, 1)
            assert words in str(failed.value) and "is it running" not in str(failed.value)
            assert len(str(failed.value).splitlines()) == 1
            spans = ledger.latest(SpanFilter(), 10)
            assert [(s.status, s.error_type) for s in spans[:1]] == [("error", error_type)]
            assert len(spans) == raw.calls
    assert breaker_for(raw.url, threshold=100, reset_after=60.0).failures() == 0
    clients["sync"].close()


def test_a_connect_that_is_never_answered_is_an_unreachable_host_not_a_slow_one() -> None:
    """As the gateway's transport says (tests/upstream/test_pooled.py): nothing answered at the
    address, so the host's circuit counts it; a read that times out is the server's slowness."""
    from ollama_meter.upstream import Upstream

    host = "http://127.0.0.1:9"
    upstream = Upstream(host)
    fresh = contextvars.Context()  # as at an attempt's start: nothing has answered yet
    try:
        silent, slow = (
            fresh.run(upstream.classify, failure("timed out"), model="m", started=False)
            for failure in (httpx.ConnectTimeout, httpx.ReadTimeout)
        )
    finally:
        upstream.close()
    assert isinstance(silent, UpstreamError) and isinstance(slow, UpstreamError)
    assert (silent.error_type, slow.error_type) == ("connection", "timeout")
    assert str(silent).startswith(f"cannot reach Ollama at {host}")
