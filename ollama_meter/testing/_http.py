"""The emulator's HTTP: a threading server, and the plumbing every route answers through.

Owns the connection: reading a body (plain or chunked), whole answers, chunked
streams (:meth:`Handler.stream`, the one stream loop), hanging up on purpose,
hanging on, and pacing replies by the emulator's latencies. Also the answers
a fault gives instead of a reply (:meth:`Handler.instead`). Routes live in
``_ollama`` and ``_openai``; the dispatch table in ``_routes``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar

from ollama_meter.testing._faults import Fault, Instead
from ollama_meter.testing._models import EmulatedModel
from ollama_meter.testing._names import find_model
from ollama_meter.testing._wire import go_json, not_found

if TYPE_CHECKING:
    from ollama_meter.testing._emulator import OllamaEmulator

T = TypeVar("T")

HANG_LIMIT_S = 30.0
"""A :attr:`Fault.HANG` request gives up (closing the connection) after this long."""


class Aborted(Exception):
    """The emulator stopped or the client left while a reply was pending."""


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Handler threads are daemons and are unblocked by stop(), so never join them.
    block_on_close = False
    # socketserver's default backlog of 5 resets bursts of concurrent clients.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        emulator: OllamaEmulator,
        handler: type[BaseHTTPRequestHandler],
    ) -> None:
        self.emulator = emulator
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up mid-stream all the time; that is not worth a traceback,
        # but a bug in the emulator is.
        if not isinstance(sys.exc_info()[1], OSError | Aborted):
            super().handle_error(request, client_address)

    def sever_all(self) -> None:
        """Close every open connection, so idle keep-alives and pending replies end now."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Like Go's net/http: each streamed chunk leaves at once instead of waiting on Nagle.
    disable_nagle_algorithm = True
    server: Server
    _head = False
    _occupied = False
    """An inference request is being answered: counted in the emulator's ``in_flight``."""

    # --- plumbing -------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_response(self, code: int, message: str | None = None) -> None:
        # Go's net/http sends no Server header; keep only the status line and Date.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def handle_one_request(self) -> None:
        # A client that hangs up, or a deliberate drop, just ends this connection.
        try:
            super().handle_one_request()
        except (OSError, Aborted):
            self.close_connection = True

    @property
    def emulator(self) -> OllamaEmulator:
        return self.server.emulator

    def _occupy(self) -> None:
        self._occupied = True
        self.emulator._busy(+1)

    def _release(self) -> None:
        """The request no longer occupies the server: called before its answer's last bytes
        leave, as a client that has them may send its next call at once (a gateway handing
        the slot on); counted after them, that call met this one still in flight."""
        if self._occupied:
            self._occupied = False
            self.emulator._busy(-1)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                try:
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    size = 0
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._release()
        if not self._head:
            self.wfile.write(body)

    def _send_json(self, status: int, obj: object, *, newline: bool = False) -> None:
        body = go_json(obj) + (b"\n" if newline else b"")
        self._send(status, body, "application/json; charset=utf-8")

    def _send_text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        except OSError:
            self.emulator._hung_up()
            raise

    def _end_chunked(self) -> None:
        self._release()
        self.wfile.write(b"0\r\n\r\n")

    def _drop(self) -> None:
        """Hang up abruptly: no more bytes, not even the end of a chunked body."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise Aborted

    def _pause(self, seconds: float, *, streaming: bool = False) -> None:
        """Wait ``seconds`` as Ollama computes; a client that leaves meanwhile ends the reply
        (Ollama cancels the request), a stream's counted as a hang-up. A whole reply's
        one long pause went on for all of it: a call cut after a second held the emulator
        for the next test to wait on."""
        self._wait_until(time.monotonic() + seconds, streaming=streaming, hurried=True)

    def _spend(self, began_ns: int, ns: int, *, streaming: bool = False) -> None:
        """Work until ``ns`` after ``began_ns`` (``time.monotonic_ns``): every duration the
        emulator reports is time it spent on the request, as Ollama's are, so none is longer
        than the call a client timed around it. Not hurried (its models take a few ms, see
        ``_models.REAL_TIME``); a client that leaves meanwhile ends the reply."""
        self._wait_until((began_ns + ns) / 1e9, streaming=streaming, hurried=False)

    def _wait_until(self, deadline: float, *, streaming: bool, hurried: bool) -> None:
        """Wait until ``deadline`` (``time.monotonic``), or a hurry when ``hurried``."""
        hurries = self.emulator.hurries
        while (left := deadline - time.monotonic()) > 0 and (
            not hurried or self.emulator.hurries == hurries
        ):
            if self.server.stopping.wait(min(left, 0.05)):
                self._drop()
            if self._client_gone():
                if streaming:
                    self.emulator._hung_up()
                self._drop()

    def _client_gone(self, wait: float = 0.0) -> bool:
        """Whether the client closed its end (a request it pipelined is no leaving).

        ``poll``, not ``select``: select() refuses a descriptor past 1,023 (ValueError), and
        a long test run's process holds more than that.
        """
        poller = select.poll()
        poller.register(self.connection, select.POLLIN)
        if not poller.poll(wait * 1000):
            return False
        try:
            return not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _hang(self) -> None:
        """Say nothing until the client leaves, the emulator stops, or the limit passes."""
        deadline = time.monotonic() + HANG_LIMIT_S
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            if self._client_gone(0.05):
                break
            # Nothing, or a pipelined request waiting: keep hanging without spinning.
            self.server.stopping.wait(0.05)
        self._drop()

    def _lookup(self, name: str, *, scheduled: bool = False) -> EmulatedModel:
        """The model ``name`` resolves to, or Ollama's 404 (see :func:`not_found`)."""
        model = find_model(self.emulator.models, name)
        if model is None:
            raise not_found(name, scheduled=scheduled)
        return model

    # --- answers ----------------------------------------------------------------

    def instead(
        self, outcome: tuple[int, str] | Instead | None, error: Callable[[int, str], None]
    ) -> bool:
        """Answer what a fault gives instead of the reply (see ``_faults.early``); True if it did.

        ``error`` writes a (status, message) in the route's own wire format.
        """
        if outcome is None:
            return False
        if outcome is Instead.NOT_FOUND:
            self._send_text(404, outcome.value)
        elif outcome is Instead.HANG:
            self._hang()
        elif outcome is Instead.DROP:
            self._drop()
        else:
            error(*outcome)
        return True

    def stream(
        self,
        content_type: str,
        pieces: Sequence[T],
        encode: Callable[[T], bytes],
        *,
        limit: int | None,
        cut: Fault | None,
        error: bytes,
        ending: Callable[[], Sequence[bytes]],
        work: Callable[[int], None] | None = None,
    ) -> None:
        """Stream a reply chunk by chunk, paced by the emulator, cut short as a fault says.

        Each piece is encoded as it leaves (timestamps are the send time). ``limit``
        pieces at most; then a :attr:`Fault.DROP` hangs up mid-body, a :attr:`Fault.STALL`
        says nothing more (then hangs up), and a
        :attr:`Fault.MIDSTREAM_ERROR` writes ``error`` and ends the body; otherwise
        ``ending()`` gives the last chunks (the final answer, usage, a terminator).
        ``work(i)`` is the model's work before piece ``i`` leaves (``len(pieces)``: before
        the ending), the time the durations it reports say it took.
        """
        emu = self.emulator
        self._pause(emu.latency, streaming=True)
        self._start_chunked(content_type)
        for index, piece in enumerate(pieces):
            if limit is not None and index >= limit:
                break
            if index:
                self._pause(emu.token_latency, streaming=True)
            if work is not None:
                work(index)
            self._write_chunk(encode(piece))
        if cut is Fault.DROP:
            self._drop()
        if cut is Fault.STALL:
            self._hang()  # closes the connection when it is over
        if cut is Fault.MIDSTREAM_ERROR:
            if error:  # (an empty chunk would end the body: no error item is none at all)
                self._write_chunk(error)
            self._end_chunked()
            return
        if pieces:
            self._pause(emu.token_latency, streaming=True)
        if work is not None:
            work(len(pieces))
        for chunk in ending():
            self._write_chunk(chunk)
        self._end_chunked()
