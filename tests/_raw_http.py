"""A loopback HTTP server for tests that script Ollama's answer byte for byte."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class RawServer:
    """Reads each request whole (its head, and the body its ``Content-Length`` says), writes
    what ``answer()`` returns as it is, and hangs up; counts the requests in ``calls``."""

    def __init__(self, answer: Callable[[], bytes]) -> None:
        self.answer = answer
        self.calls = 0
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
            with conn:
                self.calls += 1
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = head.lower().partition(b"content-length:")[2].split(b"\r\n")[0]
                while len(body) < int(length or 0):
                    body += conn.recv(65536)
                conn.sendall(self.answer())
