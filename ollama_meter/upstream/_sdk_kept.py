"""The ``ollama`` client's kept-alive connections that Ollama closed: as the gateway's (``_kept.py``).

A request that went out on a kept-alive connection as Ollama closed it (idle too long, or
restarting) comes back with not a byte of an answer, and httpx sends nothing again: the
CLI or the Python API said "cannot reach Ollama" of a server that was up, retries off.
Such a request is sent again here, within its one attempt: no retry counted, no breaker
charged. One lost on a new connection is never sent again here: Ollama may have taken it;
nor one whose connection brought a byte of an answer first (part of a status line): httpcore
says "disconnected without sending a response" of that too, so the bytes are counted here,
as the connection's stream reads them.

The same trace tells when a request's body was sent whole: Ollama has the call
(``Heard.delivered``), and a caller who stops it from then on consumed its prompt.

Closing the client (another thread's ``close()``) shuts its connections down before httpx
closes them: a socket's close does not wake a thread blocked reading it, which slept on until
Ollama's next bytes (minutes, for a long prompt), or, once the closed socket's number was
given to another file or connection, until the call's timeout. Shut down, its read ends now;
and a connection is closed by no thread while another reads or writes it (``_Stream``).
"""

from __future__ import annotations

import asyncio.trsock
import contextlib
import contextvars
import socket
import threading
import weakref
from typing import Any

import httpx

from ollama_meter.upstream._sdk_heard import delivered

_ANSWERED: contextvars.ContextVar[bool] = contextvars.ContextVar("ometer_answered", default=False)
"""Whether a byte of an answer came since this thread or task last sent a request."""

LOST = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
"""What httpx raises when a connection closes or resets before an answer's first byte."""

MOST_SENT = 4
"""The most times one request goes: each time after the first, it was lost on a kept-alive
connection (the pool's next may be as old); a new connection's loss ends it."""


class _Connections:
    """Whether a request went on a new connection, heard from httpcore's trace events
    (passed on to the trace hook the request came with, ``theirs``)."""

    def __init__(self, theirs: Any) -> None:
        self.opened = False
        self._theirs = theirs

    def heard(self, event: str, info: dict[str, Any]) -> None:
        self._note(event)
        if self._theirs is not None:
            self._theirs(event, info)

    async def aheard(self, event: str, info: dict[str, Any]) -> None:
        self._note(event)
        if self._theirs is not None:
            await self._theirs(event, info)

    def _note(self, event: str) -> None:
        self.opened = self.opened or event.startswith("connection.connect_")
        if event.endswith(".send_request_body.complete"):  # http11. or http2.
            delivered()

    def lost(self, exc: BaseException, request: httpx.Request) -> bool:
        """Whether ``exc`` lost ``request`` on a kept-alive connection, before any answer,
        and its body can go again (bytes, as the ``ollama`` client sends)."""
        if self.opened or _ANSWERED.get() or not isinstance(request.stream, httpx.ByteStream):
            return False
        if isinstance(exc, httpx.RemoteProtocolError):
            return "without sending a response" in str(exc)  # httpcore's words: no byte came
        return True


class _Noted:
    """A connection's stream (httpcore's), which notes each byte of an answer it reads."""

    def __init__(self, stream: Any, made_by: _Backend | None = None) -> None:
        self._stream, self._made_by = stream, made_by
        if made_by is not None:
            made_by.keep(self)

    def _shut(self) -> None:
        """Shut the connection down, waking a thread blocked reading it (the socket's, not
        TLS's own shutdown, which would pull its state from under that thread)."""
        sock = self._stream.get_extra_info("socket")
        with contextlib.suppress(OSError):  # closed already, or never connected
            if isinstance(sock, socket.socket):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            elif isinstance(sock, asyncio.trsock.TransportSocket):  # on an event loop
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._shut()

    def __getattr__(self, name: str) -> Any:  # get_extra_info; aclose, write on an event loop
        return getattr(self._stream, name)


class _Stream(_Noted):
    """:class:`_Noted` in threads, closed under no thread reading or writing it.

    A socket closed by one thread (the client's ``close()``) as another is about to wait on
    it gives its number back at once: a connection or file opened meanwhile takes it, and the
    waiting thread waits on that one (a pipe, a socket nobody writes to) until its timeout,
    five minutes. So a close while another thread is in a read or a write only shuts the
    connection down (that thread's wait ends at once); the last thread out closes it."""

    def __init__(self, stream: Any, made_by: _Backend | None = None) -> None:
        self._guard = threading.Lock()
        self._users = 0
        self._closing = False
        super().__init__(stream, made_by)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._enter()
        try:
            data: bytes = self._stream.read(max_bytes, timeout)
        finally:
            self._leave()
        _ANSWERED.set(_ANSWERED.get() or bool(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._enter()
        try:
            self._stream.write(buffer, timeout)
        finally:
            self._leave()

    def close(self) -> None:
        with self._guard:
            if self._users:
                self._closing = True
                self._shut()
            else:
                self._stream.close()

    def cut(self) -> None:
        """Shut the connection down (never another's that took its number)."""
        with self._guard:
            self._shut()

    def start_tls(self, *args: Any, **kwargs: Any) -> Any:
        return _Stream(self._stream.start_tls(*args, **kwargs), self._made_by)

    def _enter(self) -> None:
        with self._guard:
            self._users += 1

    def _leave(self) -> None:
        with self._guard:
            self._users -= 1
            if self._closing and not self._users:
                self._closing = False
                self._stream.close()


class _AsyncStream(_Noted):
    """:class:`_Noted` on the event loop, which alone closes it."""

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = await self._stream.read(max_bytes, timeout)
        _ANSWERED.set(_ANSWERED.get() or bool(data))
        return data

    async def start_tls(self, *args: Any, **kwargs: Any) -> Any:
        return _AsyncStream(await self._stream.start_tls(*args, **kwargs), self._made_by)


class _Backend:
    """httpcore's network backend, its streams wrapped in :class:`_Stream`."""

    def __init__(self, backend: Any, stream: type[_Noted]) -> None:
        self._backend, self._wrap = backend, stream
        self._streams: weakref.WeakSet[_Noted] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._cut = False

    def keep(self, stream: _Noted) -> None:
        """Keep ``stream`` to :meth:`cut` (weakly: a closed connection's goes with it); one
        made as the client closed (its call began before) is cut at once."""
        with self._lock:
            self._streams.add(stream)
            cut = self._cut
        if cut:
            stream.cut()

    def cut(self) -> None:
        """Shut every connection made down, as the client closes, and any made after."""
        with self._lock:
            self._cut, streams = True, list(self._streams)
        for stream in streams:
            stream.cut()

    def connect_tcp(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._backend.connect_tcp(*args, **kwargs), self)

    async def aconnect_tcp(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(await self._backend.connect_tcp(*args, **kwargs), self)

    def __getattr__(self, name: str) -> Any:  # connect_unix_socket (no kept-alive use), sleep
        return getattr(self._backend, name)


class _AsyncBackend(_Backend):
    """:class:`_Backend` on the event loop."""

    connect_tcp = _Backend.aconnect_tcp


def _counting(
    transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport, aio: bool
) -> _Backend | None:
    """Wrap the pool's backend (httpx takes none of its own), if it has the one httpcore's
    pools have; without it, a partial answer's loss reads as no answer's, as before."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is not None:
        wrapped = _AsyncBackend(backend, _AsyncStream) if aio else _Backend(backend, _Stream)
        pool._network_backend = wrapped  # type: ignore[union-attr]
        return wrapped
    return None


class KeptTransport(httpx.HTTPTransport):
    """httpx's transport, sending again a request lost on a kept-alive connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backend = _counting(self, aio=False)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.cut()
        super().close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        theirs = request.extensions.get("trace")
        for sent in range(1, MOST_SENT + 1):
            connections = _Connections(theirs)
            _ANSWERED.set(False)
            request.extensions = {**request.extensions, "trace": connections.heard}
            try:
                return super().handle_request(request)
            except LOST as exc:
                if sent == MOST_SENT or not connections.lost(exc, request):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncKeptTransport(httpx.AsyncHTTPTransport):
    """:class:`KeptTransport` on the event loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backend = _counting(self, aio=True)

    def cut(self) -> None:
        """Shut every connection down (from any thread), and any made after: its client is
        closed by another event loop than its own (``_sdk_loops.py``)."""
        if self._backend is not None:
            self._backend.cut()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        theirs = request.extensions.get("trace")
        for sent in range(1, MOST_SENT + 1):
            connections = _Connections(theirs)
            _ANSWERED.set(False)
            request.extensions = {**request.extensions, "trace": connections.aheard}
            try:
                return await super().handle_async_request(request)
            except LOST as exc:
                if sent == MOST_SENT or not connections.lost(exc, request):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
