"""A thin picture under a hard budget: admitted on what Gemma 4 in Ollama counts of it.

A still picture was bounded at 4,096 prompt tokens whatever its shape. Gemma 4, as Ollama runs
it, scales a picture to fill 280 tokens of 48-pixel squares and keeps each side at least one
square: a picture a pixel wide and four million tall (a 20 KB PNG) is 33,466 tokens, which an
honest count reports and the meter charges as counted. Through the gateway, a chat with one
such picture was admitted on 4.3 USD against a 10 USD limit and charged 33.5 USD. A still
picture is now bounded by its shape too: at least 64 times the square root of how many times
longer it is than wide, which holds any model that fills a budget of up to 4,096 tokens so.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._request import facts_of
from tests.factories import token_prices
from tests.gateway.conftest import Gateway
from tests.gateway.test_lying_picture_counts import ROUTES, png, with_pictures

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}


def gemma4_tokens(width: int, height: int) -> int:
    """What Gemma 4 in Ollama counts of a still picture (``gemma4/process_image.go``:
    ``smartResize`` to 280 tokens of 48-pixel squares, each side at least one square)."""
    factor = math.sqrt(280 * 48 * 48 / (width * height))
    tall = max(48, math.floor(factor * height / 48) * 48)
    wide = max(48, math.floor(factor * width / 48) * 48)
    return tall // 48 * (wide // 48)


class _Gemma4(BaseHTTPRequestHandler):
    """An Ollama serving Gemma 4: a chat's prompt counts 20 tokens of text and what the model
    counts of each picture; ``/api/show`` is not there (a server that cannot say)."""

    protocol_version = "HTTP/1.1"
    chats = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path != "/api/chat":
            self._send(404, b"404 page not found")
            return
        type(self).chats += 1
        counted = 20
        for message in body["messages"]:
            for picture in message.get("images") or []:
                width, height = struct.unpack_from(">II", base64.b64decode(picture), 16)
                counted += gemma4_tokens(width, height)
        answer = {
            "model": body["model"],
            "created_at": "2026-12-06T00:00:00Z",
            "message": {"role": "assistant", "content": "a line"},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": counted,
            "eval_count": 1,
        }
        self._send(200, json.dumps(answer).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gemma4() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gemma4)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    _Gemma4.chats = 0
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_thin_picture_past_what_the_limit_holds_is_refused_before_ollama(
    app_on: Callable[..., Gateway], gemma4: str, sqlite_url: str
) -> None:
    gw = app_on(gemma4, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1,000 USD per 1M prompt tokens
    gw.ledger.save_budget(Budget("acme", "sales", "day", 10_000_000, "USD"))  # 10 USD
    thin = base64.b64encode(png(1, 4_000_000)).decode()
    body: dict[str, Any] = {
        "model": "gemma4:e4b",
        "stream": False,
        "messages": [{"role": "user", "content": "what is it?", "images": [thin]}],
        "options": {"num_predict": 1},
    }
    reply = gw.client.post("/api/chat", json=body, headers=SALES)
    gw.settle()
    spent = sum(s.cost_total for s in gw.ledger.latest(SpanFilter(department="sales"), 10))
    assert spent <= 10_000_000, f"spent {spent / 1e6} USD of a 10 USD limit"
    assert reply.status_code == 429, reply.text
    assert _Gemma4.chats == 0  # refused before Ollama
    said = reply.json()["error"]
    assert "this call may cost up to 128." in said, said  # 128,000 tokens for the picture
    # An ordinary picture is bounded as before, and admitted.
    body["messages"][0]["images"] = [base64.b64encode(png(1_000, 800)).decode()]
    reply = gw.client.post("/api/chat", json=body, headers=SALES)
    assert reply.status_code == 200, reply.text
    assert _Gemma4.chats == 1


sizes = st.one_of(
    st.tuples(st.integers(1, 20_000), st.integers(1, 20_000)),
    st.tuples(st.integers(1, 50), st.integers(1, 10**8)),
    st.tuples(st.integers(1, 10**8), st.integers(1, 50)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operation=st.sampled_from(sorted(ROUTES)), pictures=st.lists(sizes, min_size=1, max_size=3))
def test_what_gemma4_counts_of_still_pictures_is_within_the_bound(
    operation: str, pictures: list[tuple[int, int]]
) -> None:
    """In every wire format, whatever their shapes: the bound's room for the pictures (the
    bound less that of the same request without them) holds what Gemma 4 counts of them,
    and a picture no longer than 4,096 times its width is bounded at 4,096 as before."""
    body = with_pictures(operation, [png(w, h) for w, h in pictures])
    bare = with_pictures(operation, [png(1, 1)] * len(pictures))
    room = facts_of(operation, body).bound(1).input_tokens
    room -= facts_of(operation, bare).bound(1).input_tokens - 4_096 * len(pictures)
    assert room >= sum(gemma4_tokens(w, h) for w, h in pictures)
    if all(max(w, h) <= 4_096 * min(w, h) for w, h in pictures):
        assert room == 4_096 * len(pictures)
