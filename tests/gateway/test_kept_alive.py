"""Through the gateway, a kept-alive connection Ollama closed loses no call, retries or not.

Ollama closes a connection idle for a while, and every one when it restarts; the call that
went out on it as it closed was a 502 "cannot reach Ollama" from a server that was up (with
``OMETER_RETRIES=0``; else a retry after a backoff, counted against the breaker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ollama_meter.ledger import SpanFilter
from tests._raw_http import FINAL, KeptAlive
from tests.gateway.conftest import Gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def kept_alive() -> Iterator[KeptAlive]:
    """Closes every connection as its second request comes."""
    server = KeptAlive(lambda connection, request: request == 2)
    yield server
    server.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_on_a_connection_ollama_closed_is_answered_with_retries_off(
    serve_on: Callable[..., Gateway], sqlite_url: str, kept_alive: KeptAlive, stream: bool
) -> None:
    """Each call after the first goes on the connection the one before it kept alive, which
    Ollama closes as it comes: sent again on a new one, answered, one span ``ok`` each."""
    gw = serve_on(kept_alive.url, sqlite_url, config={"retries": 0})
    for _ in range(3):
        reply = gw.client.post("/api/chat", json={**CHAT, "stream": stream})
        assert reply.status_code == 200, reply.text
        assert '"done": true' in reply.text or '"done":true' in reply.text
    chats = [(c, r) for c, r, path in kept_alive.requests if path == "/api/chat"]
    assert len(chats) == 3 + sum(1 for _, r in chats if r == 2)  # each lost one, sent again
    assert any(r == 2 for _, r in chats), "no call went on a kept-alive connection"
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.status, s.error_type, s.input_tokens, s.output_tokens) for s in spans] == [
        ("ok", None, FINAL["prompt_eval_count"], FINAL["eval_count"])
    ] * 3
