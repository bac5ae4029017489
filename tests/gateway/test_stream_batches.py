"""Items of a stream that arrive from Ollama together leave for the client together.

Each item was one ASGI message, one chunk and one socket write, so a client woke once per
item even for items the gateway had read in one piece. Now the items of one read go out as
one part, the same bytes: what arrives is sent at once, never held for what has not.
"""

from __future__ import annotations

import json

from ollama_meter.ledger import SpanFilter, open_ledger
from tests._raw_http import RawServer
from tests.gateway.test_relays_closed import gateway_on, left_open

ITEMS = [
    {"model": "llama3.1:8b", "message": {"role": "assistant", "content": word}, "done": False}
    for word in ("one", " two", " three")
] + [
    {
        "model": "llama3.1:8b",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 7,
        "eval_count": 3,
    }
]
STREAM = b"".join(json.dumps(item).encode() + b"\n" for item in ITEMS)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n"
CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_items_read_in_one_piece_leave_in_one_part(sqlite_url: str) -> None:
    server = RawServer(lambda: HEAD % len(STREAM) + STREAM, threaded=True)
    try:
        app = gateway_on(server.url, sqlite_url)
        _, sent = left_open(app, "POST", "/api/chat", json.dumps(CHAT).encode(), leave_at=99)
    finally:
        server.close()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == STREAM
    assert sent[1]["more_body"] is False
    (span,) = open_ledger(sqlite_url).latest(SpanFilter(), 10)
    assert (span.status, span.input_tokens, span.output_tokens, span.token_source) == (
        "ok",
        7,
        3,
        "reported",
    )


def test_a_broken_item_after_good_ones_in_one_piece_sends_them_then_the_error(
    sqlite_url: str,
) -> None:
    """The items before a line that is no JSON object still reach the client, before the
    error item that ends the stream, as when each was sent alone."""
    broken = STREAM.split(b"\n")[0] + b"\n" + b"not json\n"
    server = RawServer(lambda: HEAD % len(broken) + broken, threaded=True)
    try:
        app = gateway_on(server.url, sqlite_url)
        _, sent = left_open(app, "POST", "/api/chat", json.dumps(CHAT).encode(), leave_at=99)
    finally:
        server.close()
    body = b"".join(m.get("body", b"") for m in sent[1:])
    first, error, end = body.split(b"\n")
    assert first.decode() == json.dumps(ITEMS[0])
    assert "not a JSON object" in json.loads(error)["error"]
    assert end == b""
    assert sent[-1]["more_body"] is False
    (span,) = open_ledger(sqlite_url).latest(SpanFilter(), 10)
    assert (span.status, span.error_type) == ("error", "stream_error")
