"""A caller that hangs up on an answer passed through unmetered (``/api/show``, ``/api/tags``,
a pull's progress): the gateway stops reading Ollama's answer and drops its connection, as it
does for a metered one, instead of reading it all for nobody or holding the call open."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from tests.gateway.conftest import Gateway
from tests.gateway.test_slow_callers import _port


class _Endless:
    """An upstream whose answer to any request is a 200 that never ends: ``chunk`` written again
    and again (every ``pause`` seconds) until the gateway drops the connection. ``sent`` counts
    the bytes written; ``dropped`` is set once a write finds the connection gone."""

    def __init__(
        self, chunk: bytes, pause: float = 0.0, content_type: bytes = b"application/json"
    ) -> None:
        self.chunk, self.pause, self.content_type = chunk, pause, content_type
        self.sent = 0
        self.dropped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
            frame = b"%x\r\n%s\r\n" % (len(self.chunk), self.chunk)
            try:
                conn.sendall(head % self.content_type)
                while True:
                    conn.sendall(frame)
                    self.sent += len(self.chunk)
                    if self.pause:
                        time.sleep(self.pause)
            except OSError:
                self.dropped.set()

    def close(self) -> None:
        self.listener.close()


def _asking(gateway: Gateway, path: str) -> socket.socket:
    """A caller that asks ``path`` and reads nothing of the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", _port(gateway)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return sock


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize(
    ("chunk", "pause"),
    [(b"x" * 65536, 0.0), (b'{"status":"pulling"}\n', 0.05)],
    ids=["a huge answer", "a pull's progress"],
)
def test_a_caller_gone_from_a_passed_through_answer_drops_ollamas_connection(
    serve_on: Callable[..., Gateway], sqlite_url: str, chunk: bytes, pause: float
) -> None:
    """A write into a caller that has gone returns as if sent, and the hang-up reached the
    pass-through relay only once Ollama's answer stopped coming (anyio puts the listener's
    cancellation off while the relay's wait is already over): an answer that kept coming
    was read on, ~150 MB of it here, for nobody. A pull's slow progress was stopped at once."""
    upstream = _Endless(chunk, pause)
    try:
        gateway = serve_on(upstream.url, sqlite_url)
        caller = _asking(gateway, "/api/tags")
        deadline = time.monotonic() + 30
        while upstream.sent < 10 * len(chunk) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # the sockets on the way fill (a huge answer); the relay waits on them
        _reset(caller)
        gone_at = upstream.sent
        assert upstream.dropped.wait(10), f"still reading Ollama's answer: {upstream.sent:,} bytes"
        # What the sockets between the two hold at most; before, ~150 MB more went by.
        assert upstream.sent - gone_at < 32 * 2**20
    finally:
        upstream.close()
