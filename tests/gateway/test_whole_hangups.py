"""A whole (non-streamed) answer whose caller hangs up before it has all of it.

The gateway wrote the span ``ok`` and then sent the answer: a caller that read part of a large
one and left was recorded as having had it. As a streamed answer's is, the answer's last bytes
are now held until the span is written, and a caller gone by then is a ``client_abort``,
charged the tokens Ollama reported (the call ran). A caller that reads it all is ``ok``, with
the same tokens and cost.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ollama_meter.ledger import SpanFilter
from tests._raw_http import answering
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

REPLY = "word " * 6_000_000  # 30 MB: far more than the sockets' buffers hold between them
ANSWER = {
    "model": "m",
    "message": {"role": "assistant", "content": REPLY},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 7,
    "eval_count": 3,
}
ASKED = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture
def large(serve_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[Gateway]:
    with answering() as server:
        server.answer = (200, {"content-type": "application/json"}, json.dumps(ANSWER).encode())
        gw = serve_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url)
        gw.ledger.add_price_rule(token_prices())
        yield gw


def _asked(gw: Gateway) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # no room for all of it
    sock.connect(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
    body = json.dumps(ASKED).encode()
    head = b"POST /api/chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    sock.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)
    return sock


def _span(gw: Gateway) -> Any:
    deadline = time.monotonic() + 30  # a busy machine: a wait, not a measure
    while not (found := gw.ledger.latest(SpanFilter(), 5)):
        assert time.monotonic() < deadline, "no span"
        time.sleep(0.05)
    (span,) = found
    return span


def charged(span: Any) -> tuple[object, ...]:
    return (span.input_tokens, span.output_tokens, span.token_source, span.cost_total)


def test_a_caller_that_reads_part_of_a_large_whole_answer_and_leaves_is_an_abort(
    large: Gateway,
) -> None:
    with _asked(large) as sock:
        got = b""
        while len(got) < 256 * 1024:
            got += sock.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    span = _span(large)  # closed with bytes unread: a reset
    # As a streamed answer's hang-up is recorded: no status the caller was given whole.
    assert (span.status, span.error_type, span.http_status) == (
        "client_abort",
        "client_abort",
        None,
    )
    assert charged(span) == (7, 3, "reported", 7 * 1_000 + 3 * 2_000)


def test_a_caller_that_reads_all_of_it_is_ok_and_charged_the_same(large: Gateway) -> None:
    with _asked(large) as sock:
        got = b""
        while part := sock.recv(1 << 20):
            got += part
            if got.endswith(b"}") and b"\r\n\r\n" in got:
                head, _, body = got.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) == length:
                    break
    assert json.loads(body) == ANSWER
    span = _span(large)
    assert (span.status, span.error_type) == ("ok", None)
    assert charged(span) == (7, 3, "reported", 7 * 1_000 + 3 * 2_000)
