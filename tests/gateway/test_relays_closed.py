"""Answers relayed as they arrive close their reads of Ollama's body, however they stop.

A pass-through answer, and a whole answer too large to hold (an embedding batch), are read
from Ollama chunk by chunk (``pool.chunks``). Stopped early (the caller gone, the answer
broken or past a bound), the read was left suspended, for the event loop's finalizer to
close: a thread-safe wake-up and a task of its own, at a time nobody chose. Here the app
runs in the test's own event loop (raw ASGI, its lifespan included), so the test sees every
async generator the call started, and which of them are still suspended once it is over:
nobody but the finalizer would close those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import pytest

from ollama_meter.config import load_settings
from ollama_meter.gateway import GatewayOptions, create_app
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.meter import Meter
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream import _pooled
from tests._raw_http import RawServer

INPUTS = [f"document number {i} about the quarterly numbers" for i in range(6)]


class Gone(OSError):
    """The client's connection is gone: what a server's ``send`` raises (ASGI 2.4)."""


async def one_call(
    app: Any, method: str, path: str, body: bytes, *, leave_at: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """One request to ``app`` in this loop; the client leaves as the app sends its
    ``leave_at``-th message (0: the answer's head), which ``send`` then raises as gone.

    The async generators the call started and left suspended, by name, and what the client
    got before it left."""
    sent: list[dict[str, Any]] = []
    left = asyncio.Event()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if left.is_set() or len(sent) == leave_at:
            left.set()
            raise Gone("the client has gone")
        sent.append(message)

    started: list[Any] = []
    hooks = sys.get_asyncgen_hooks()

    def firstiter(agen: Any) -> None:
        started.append(agen)
        if hooks.firstiter is not None:
            hooks.firstiter(agen)

    async with app.router.lifespan_context(app) as state:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"localhost"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 11434),
            "state": dict(state),
        }
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=hooks.finalizer)
        try:
            with contextlib.suppress(Exception):  # the client is gone: what is raised reaches none
                await app(scope, receive, send)
        finally:
            sys.set_asyncgen_hooks(*hooks)
        suspended = [agen.__qualname__ for agen in started if agen.ag_frame is not None]
    return suspended, sent


def left_open(
    app: Any, method: str, path: str, body: bytes, *, leave_at: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """:func:`one_call` in an event loop of its own."""
    return asyncio.run(one_call(app, method, path, body, leave_at=leave_at))


def gateway_on(upstream: str, sqlite_url: str) -> Any:
    settings = load_settings(db_url=sqlite_url, ollama_host=upstream)
    meter = Meter.from_settings(settings, source="gateway")
    return create_app(settings, GatewayOptions(), meter=meter)


@pytest.mark.parametrize("leave_at", [0, 1], ids=["at-the-head", "after-the-first-part"])
def test_a_passed_through_answer_whose_caller_leaves_closes_its_read(
    emulator: OllamaEmulator, sqlite_url: str, leave_at: int
) -> None:
    app = gateway_on(emulator.url, sqlite_url)
    suspended, sent = left_open(app, "GET", "/api/tags", b"", leave_at=leave_at)
    assert [m["type"] for m in sent] == ["http.response.start"][:leave_at]
    assert suspended == []


@pytest.mark.parametrize("leave_at", [0, 1], ids=["at-the-head", "after-the-first-part"])
def test_a_whole_answer_relayed_as_it_arrives_whose_caller_leaves_is_closed_with_it(
    emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, leave_at: int
) -> None:
    """An embedding batch past the read limit, whose caller leaves before or after its
    head: the relay is closed as the answer ends, and the call's span written then (an
    abort, its prompt charged: Ollama did the work). Gone before the head, the relay never
    ran, and the call was left open: no span."""
    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 2_000)
    body = json.dumps({"model": "nomic-embed-text", "input": INPUTS}).encode()
    app = gateway_on(emulator.url, sqlite_url)
    suspended, sent = left_open(app, "POST", "/api/embed", body, leave_at=leave_at)
    assert [m["type"] for m in sent] == ["http.response.start"][:leave_at]
    assert suspended == []
    (span,) = open_ledger(sqlite_url).latest(SpanFilter(), 10)  # committed as the app stopped
    assert (span.status, span.operation, span.upstream_host, span.token_source) == (
        "client_abort",
        "embed",
        emulator.url,
        "estimated",
    )
    assert span.input_tokens is not None and span.input_tokens > 0


def test_a_whole_answer_that_stops_being_json_past_the_read_limit_closes_its_read(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ollama's answer turns out not to be JSON after the bytes already relayed: the relay
    stops reading it (the connection to the client is cut), and closes its read."""
    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 2_000)
    broken = b'{"model":"nomic-embed-text","embeddings":[[' + b"0.5," * 1_000 + b"?]]}"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    server = RawServer(lambda: head % len(broken) + broken, threaded=True)
    try:
        body = json.dumps({"model": "nomic-embed-text", "input": INPUTS}).encode()
        app = gateway_on(server.url, sqlite_url)
        suspended, sent = left_open(app, "POST", "/api/embed", body, leave_at=99)
    finally:
        server.close()
    assert sent[0]["type"] == "http.response.start"
    assert all(m["more_body"] for m in sent[1:])  # never ended: the client cannot take it whole
    assert suspended == []
    (span,) = open_ledger(sqlite_url).latest(SpanFilter(), 10)
    assert (span.status, span.error_type) == ("error", "stream_error")


@pytest.mark.parametrize("leave_at", [1, 2], ids=["after-the-head", "after-the-first-item"])
def test_a_metered_stream_whose_caller_leaves_mid_way_is_closed_with_it(
    emulator: OllamaEmulator, sqlite_url: str, leave_at: int
) -> None:
    """The relay of a stream whose send fails (the caller gone, as an ASGI 2.4 server says
    it) was left suspended, with its reads of Ollama, for the finalizer to close; its span
    waited for that. They are closed as the answer ends, the span written then."""
    chat = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    emulator.token_latency = 0.01  # one item a read: read together, items leave as one part
    app = gateway_on(emulator.url, sqlite_url)
    suspended, sent = left_open(
        app, "POST", "/api/chat", json.dumps(chat).encode(), leave_at=leave_at
    )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"][:leave_at]
    assert suspended == []
    (span,) = open_ledger(sqlite_url).latest(SpanFilter(), 10)
    assert (span.status, span.error_type) == ("client_abort", "client_abort")
