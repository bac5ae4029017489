"""A loopback HTTP server for tests that script Ollama's answer byte for byte."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Listener:
    """A loopback port whose connections :meth:`_accepted` takes, one by one, as they come."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError


class RawServer(_Listener):
    """Reads each request whole (its head, and the body its ``Content-Length`` says), writes
    what ``answer()`` returns as it is (:meth:`reply`, which a subclass may answer by the
    request), and hangs up; counts the connections in ``calls``, and keeps each request's
    first line in ``asked``. ``threaded``: a thread a connection, so answers may overlap."""

    def __init__(self, answer: Callable[[], bytes], *, threaded: bool = False) -> None:
        self.answer = answer
        self.calls = 0
        self.asked: list[bytes] = []
        self.threaded = threaded
        super().__init__()

    def reply(self, head: bytes, body: bytes) -> bytes:
        """The bytes that answer the request ``head`` (its first line and headers) and ``body``."""
        return self.answer()

    def _accepted(self, conn: socket.socket) -> None:
        self.calls += 1
        if self.threaded:
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
        else:
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            if (request := read_request(conn)) is None:
                return
            self.asked.append(request[0].partition(b"\r\n")[0])
            with contextlib.suppress(OSError):  # the caller gave up on it
                conn.sendall(self.reply(*request))


def read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """The head (first line and headers) and the body its ``Content-Length`` says of the
    request ``conn`` sends; None when it hangs up before its head ends."""
    request = b""
    while b"\r\n\r\n" not in request:
        got = conn.recv(65536)
        if not got:
            return None
        request += got
    head, _, body = request.partition(b"\r\n\r\n")
    length = head.lower().partition(b"content-length:")[2].split(b"\r\n")[0]
    while len(body) < int(length or 0):
        body += conn.recv(65536)
    return head, body


DRIP_S = 8
"""How long :func:`dripping` drips before it answers: well past the 1 s timeouts of the tests."""


class _Drip(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        drop, answer = self.server.drop, self.server.answer  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for _ in range(DRIP_S * 10):
                self.wfile.write(b"1\r\n%s\r\n" % drop)
                self.wfile.flush()
                time.sleep(0.1)
            line = answer(self.path)
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
        except OSError:
            pass  # the caller gave up on it
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def dripping(drop: bytes, answer: Callable[[str], bytes]) -> ThreadingHTTPServer:
    """A server that answers 200 and then drips ``drop`` (one byte) every 0.1 s for
    :data:`DRIP_S`, then ``answer(path)``, or until the caller leaves. Shut it down after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.drop, server.answer = drop, answer  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server


class _Answering(BaseHTTPRequestHandler):
    """Answers every POST with ``server.answer``: (status, headers, body); ``{path}`` in a
    header value is the request's path."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status, headers, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value.replace("{path}", self.path))
        if status not in (204, 304):
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        if status not in (204, 304):
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def answering() -> Iterator[ThreadingHTTPServer]:
    """A server whose every answer is what its ``answer`` attribute says (see _Answering)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


FINAL = {  # Ollama's whole answer to a chat
    "model": "m",
    "message": {"role": "assistant", "content": "hi"},
    "done": True,
    "prompt_eval_count": 7,
    "eval_count": 3,
}


class KeptAlive(_Listener):
    """An Ollama that keeps its connections alive, and closes one without a word as the
    request that ``drops(connection, request)`` names arrives on it (each counted from 1):
    as Ollama does when its idle timer fires as a request comes. ``reset``: closed with a
    reset (unread bytes), else with a FIN; ``partial``: the bytes of an answer it writes
    first (none: it closes without a word). Every request it read is in ``requests``."""

    def __init__(
        self, drops: Callable[[int, int], bool], *, reset: bool = False, partial: bytes = b""
    ) -> None:
        self.drops, self.reset, self.partial = drops, reset, partial
        self.requests: list[tuple[int, int, str]] = []
        self.connections = 0
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        self.connections += 1
        threading.Thread(target=self._handle, args=(conn, self.connections), daemon=True).start()

    def _handle(self, conn: socket.socket, number: int) -> None:
        with conn:
            data, served = b"", 0
            while True:
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        return
                    data += got
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(head.lower().partition(b"content-length:")[2].split(b"\r\n")[0] or 0)
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                served += 1
                path = head.split(b" ")[1].decode()
                self.requests.append((number, served, path))
                if self.drops(number, served):
                    conn.sendall(self.partial)
                    if self.reset:  # closed with the request unread: a reset
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    return
                conn.sendall(_answer(path))


def _answer(path: str) -> bytes:
    body = json.dumps({
        "/api/tags": {"models": [{"name": "m", "model": "m"}]},
        "/api/ps": {"models": []},
        "/api/version": {"version": "0.6.0"},
    }.get(path, FINAL)).encode()  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body
