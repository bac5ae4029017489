"""Connections held open by a caller that sends nothing, or a byte now and then.

The gateway takes a bounded number of connections (its open files). One machine on the
network could hold every one of them (a silent connection is kept 60 s, a head may trickle
in for 60 s, a declared 32 MiB body for minutes) and every other caller was refused 503 for
as long as it went on. When the gateway is full, the connection that has waited longest on
its caller now gives way to the new one; a connection whose request is being answered never
does, and when all are, the newcomer is refused as before.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given, strategies as st

from ollama_meter.gateway import _server, listening_socket
from ollama_meter.gateway._connections import Waiting
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway

CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
HOLDS = [
    b"",  # connected, silent
    b"POST /api/chat HTTP/1.1\r\nhost: x\r\nx-ometer-dep",  # a head trickling in
    b"POST /api/chat HTTP/1.1\r\nhost: x\r\ncontent-length: 33554432\r\n\r\n{",  # a body
    b"GET /api/version HTTP/1.1\r\nhost: x\r\n\r\n",  # answered, then idle (kept alive)
]

HEAD_LET_GO = (
    "the gateway needed this connection for another caller: its request's headers had not "
    "all arrived; send them at once"
)
LET_GO = {
    HOLDS[0]: b"",
    HOLDS[1]: b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json; charset=utf-8\r\n"
    b"content-length: " + str(len(json.dumps({"error": HEAD_LET_GO}))).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + json.dumps({"error": HEAD_LET_GO}).encode(),
    HOLDS[2]: b"",  # its call is the gateway's to end: a client_abort span
    HOLDS[3]: b"",
}
"""What each kind of held connection is sent as it is let go."""


def _address(gw: Gateway) -> tuple[str, int]:
    parts = urlsplit(gw.url)
    return str(parts.hostname), int(parts.port or 0)


def _closed(sock: socket.socket, wait: float = 0.3) -> bytes | None:
    """What the gateway sent before it closed ``sock``, or None while it keeps it open."""
    sock.settimeout(wait)
    received = b""
    try:
        while part := sock.recv(65536):
            received += part
    except TimeoutError:
        return None
    return received


@pytest.mark.parametrize("sent", HOLDS, ids=["silent", "head", "body", "idle"])
def test_a_full_gateway_lets_the_longest_waiting_connections_go_for_new_callers(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, sent: bytes
) -> None:
    """Eight connections held (the most the gateway takes here): three callers, each keeping
    its own connection open, are answered, and the three held longest are let go."""
    gw = serve_on(emulator.url, sqlite_url, server_options={"max_connections": 8})
    held = []
    for _ in range(8):
        sock = socket.create_connection(_address(gw), timeout=10)
        sock.sendall(sent)
        if sent.startswith(b"GET"):  # its answer read: idle from now on
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        threading.Event().wait(0.05)  # each begins to wait after the one before
        held.append(sock)
    callers = [httpx.Client(base_url=gw.url, timeout=30) for _ in range(3)]
    try:
        for n, caller in enumerate(callers):
            reply = caller.post("/api/chat", json=CHAT)
            assert reply.status_code == 200, reply.text
            assert _closed(held[n]) == LET_GO[sent], f"connection {n} was not let go"
        assert [_closed(sock) for sock in held[3:]] == [None] * 5
        statuses = sorted(s.status for s in gw.ledger.latest(SpanFilter(), 100))
        aborted = ["client_abort"] * 3 if sent is HOLDS[2] else []  # the gateway's hang-up
        assert statuses == [*aborted, "ok", "ok", "ok"]
    finally:
        for sock in held:
            sock.close()
        for caller in callers:
            caller.close()


def test_connections_whose_calls_are_answered_are_never_let_go_and_a_newcomer_is_refused(
    serve_on: Callable[..., Gateway], sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three calls Ollama takes a second each to answer hold the three connections taken:
    a fourth caller is refused 503 and the log says why, the three are answered, and their
    connections, closed, make room again."""
    with OllamaEmulator(latency=1.5) as slow:
        gw = serve_on(slow.url, sqlite_url, server_options={"max_connections": 3})
        replies: list[int] = []

        def call() -> None:
            replies.append(httpx.post(f"{gw.url}/api/chat", json=CHAT, timeout=30).status_code)

        callers = [threading.Thread(target=call) for _ in range(3)]
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 30
        while len(slow.requests_to("/api/chat")) < 3:  # all three with Ollama
            assert time.monotonic() < deadline, "the three calls never reached Ollama"
            time.sleep(0.02)
        with socket.create_connection(_address(gw), timeout=10) as extra:
            answer = _closed(extra, wait=10)
        for caller in callers:
            caller.join(30)
        assert httpx.get(f"{gw.url}/api/version").status_code == 200  # room again
    assert answer is not None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head
    assert json.loads(body) == {
        "error": "the gateway has as many connections open as it takes; retry shortly"
    }
    assert replies == [200, 200, 200]
    assert "refused a connection: 3 are open, the most this process takes" in caplog.text


def _small_send_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateways listening from here on send through sockets that hold a few KiB (accepted
    sockets take the listening one's), so an answer of some 100 KiB fills them."""
    from tests.gateway import conftest

    def listening(host: str, port: int) -> socket.socket:
        sock = listening_socket(host, port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return sock

    monkeypatch.setattr(conftest, "listening_socket", listening)


def test_an_answer_nobody_reads_is_hung_up_on_though_the_connection_was_closed(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer given whole (the page: 19 KiB) that its caller never reads waits in the
    gateway once the sockets on the way are full. The connection, closed when it had been
    idle a while (keep-alive's timeout) or given up for a new caller, waited to send it for
    ever: the hang-up of a caller that takes nothing watched only connections still open, and
    only from a wait of 64 KiB. So each such caller kept a connection of the gateway's, and
    its descriptor, for as long as it liked, and the gateway could not let it go for another.
    Now it is hung up on once it has taken nothing for STALLED_S, closed or not."""
    monkeypatch.setattr(_server, "STALLED_S", 0.5)
    _small_send_buffers(monkeypatch)
    gw = serve_on(
        emulator.url,
        sqlite_url,
        server_options={"max_connections": 1, "timeout_keep_alive": 0.2},
    )
    assert gw.server is not None
    connections = gw.server.server_state.connections
    unread = socket.socket()
    unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills at once
    unread.connect(_address(gw))
    unread.sendall(b"GET /dashboard HTTP/1.1\r\nhost: x\r\n\r\n")
    try:
        deadline = time.monotonic() + 30
        while not any(c.cycle and c.cycle.response_complete for c in list(connections)):
            assert time.monotonic() < deadline, "never answered"
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while connections:  # hung up on
            assert time.monotonic() < deadline, "the connection of an unread answer is kept"
            time.sleep(0.05)
        reply = httpx.get(f"{gw.url}/api/version", timeout=10)  # its place is free again
        assert reply.status_code == 200
    finally:
        unread.close()


def _answer_of(sock: socket.socket) -> bytes:
    """One whole answer (a head with its Content-Length, then the body) read from ``sock``."""
    received = b""
    while b"\r\n\r\n" not in received:
        part = sock.recv(65536)
        assert part, f"closed before the answer's head: {received!r}"
        received += part
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        part = sock.recv(65536)
        assert part, f"closed after {len(body)} of {length} bytes"
        body += part
    return head + b"\r\n\r\n" + body


def test_a_caller_that_read_its_answer_is_not_hung_up_on_for_the_next_one_it_reads_later(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that read its answer, asked another on the same connection and took less than
    STALLED_S to begin reading it, gets it whole: the first answer's wait is over. (The
    second answer's bytes, more than the first's, were taken for the first's still waiting.)"""
    monkeypatch.setattr(_server, "STALLED_S", 1.0)
    _small_send_buffers(monkeypatch)
    gw = serve_on(emulator.url, sqlite_url)
    assert gw.server is not None
    now = datetime.now(UTC)
    gw.ledger.record([make_span(started_at=now, department=f"d{n}") for n in range(8)])
    connections = gw.server.server_state.connections
    with socket.socket() as caller:
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        caller.connect(_address(gw))
        caller.settimeout(10)
        caller.sendall(b"GET /dashboard?model=none HTTP/1.1\r\nhost: x\r\n\r\n")  # 20 KB
        deadline = time.monotonic() + 30
        while not any(c.cycle and c.cycle.response_complete for c in list(connections)):
            assert time.monotonic() < deadline, "never answered"
            time.sleep(0.01)
        answered = time.monotonic()  # its rest waits in the gateway
        assert _answer_of(caller).startswith(b"HTTP/1.1 200 ")
        time.sleep(max(0.0, answered + 0.5 - time.monotonic()))
        caller.sendall(b"GET /dashboard HTTP/1.1\r\nhost: x\r\n\r\n")  # 48 KB
        time.sleep(max(0.0, answered + 1.3 - time.monotonic()))  # it waited 0.8 s
        assert _answer_of(caller).startswith(b"HTTP/1.1 200 ")


def test_a_flood_from_one_machine_lets_its_own_connections_go_before_anothers_upload(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """A caller's prompt on its way (a body arriving for seconds: a picture over a VPN) was the
    longest waiting connection once a flood from one other machine had cycled through the
    gateway's connections, and was cut for the flood's next one. Now the connection let go is
    the longest waiting one of the address that holds the most (IPv6: the most in one /64)."""
    gw = serve_on(emulator.url, sqlite_url, server_options={"max_connections": 6})
    body = json.dumps(CHAT).encode()
    upload = socket.create_connection(_address(gw), timeout=10)  # from 127.0.0.1
    upload.sendall(b"POST /api/chat HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body))
    upload.sendall(body[:10])
    flood = []
    try:
        for _ in range(12):  # the flood, from another address: twice what the gateway takes
            sock = socket.create_connection(
                _address(gw), timeout=10, source_address=("127.0.0.2", 0)
            )
            flood.append(sock)
            threading.Event().wait(0.02)
        upload.sendall(body[10:])
        assert _answer_of(upload).startswith(b"HTTP/1.1 200 ")
        assert sum(_closed(sock) is not None for sock in flood) >= 7
    finally:
        upload.close()
        for sock in flood:
            sock.close()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["began", "gone", "longest"]), st.integers(0, 9), st.integers(0, 3)
        ),
        max_size=80,
    ),
    st.sets(st.integers(0, 9)),
)
def test_the_connection_let_go_is_the_longest_waiting_of_the_address_holding_the_most(
    steps: list[tuple[str, int, int]], busy: set[int]
) -> None:
    """Against a plain list of (connection, address) in the order they began to wait: the one
    let go is the first of an address holding the most of those that still wait."""
    waiting: Waiting[int] = Waiting()
    model: list[tuple[int, str]] = []  # in the order they began; ``busy`` ones wait no more
    for op, conn, peer in steps:
        if op == "began":
            model = [(c, p) for c, p in model if c != conn] + [(conn, f"10.0.0.{peer}")]
            waiting.began(conn, f"10.0.0.{peer}")
        elif op == "gone":
            model = [(c, p) for c, p in model if c != conn]
            waiting.gone(conn)
        else:
            chosen = waiting.longest(lambda c: c not in busy)
            while True:  # the model's: those that wait no more are forgotten on the way
                counts = {p: sum(1 for _, q in model if q == p) for _, p in model}
                if not counts:
                    assert chosen is None
                    break
                most = max(counts.values())
                firsts = {
                    next(c for c, q in model if q == p) for p, n in counts.items() if n == most
                }
                if chosen is not None and chosen in firsts:
                    model = [(c, p) for c, p in model if c != chosen]
                    break
                stale = [c for c in firsts if c in busy]
                assert stale, f"{chosen} let go, where one of {firsts} should be"
                model = [(c, p) for c, p in model if c not in stale]
        # a busy one may have been looked at and forgotten (until it waits again)
        model = [(c, p) for c, p in model if c in waiting or c not in busy]
        assert [c for c, _ in model if c not in waiting] == []
        assert len(waiting) == len(model)
