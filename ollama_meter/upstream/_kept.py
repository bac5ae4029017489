"""Kept-alive connections that Ollama closed while they waited in the gateway's pool.

Ollama (Go's HTTP server) closes a connection that has been idle for a while, and every
one of them when it restarts. A request that goes out on such a connection at that very
moment is lost before Ollama reads it: the connection closes with not a byte of an
answer. aiohttp sends such a request again only for the idempotent methods, and every
metered call is a POST, so the caller got a 502 "cannot reach Ollama" from a server that
was up, and with ``OMETER_RETRIES=0`` nothing tried again.

Such a request is sent again here, once, on a new connection, whatever the retry policy
says, as browsers do: it is one attempt of the call, which no breaker counts. It goes on
a connection of its own, never kept: the pool's others have waited as long as the lost one.
A request that fails on a new connection is never sent again here: Ollama may have taken
it (a POST computed twice), and the one retry policy decides; nor one whose connection
brought a byte of an answer before it was reset (part of a status line): aiohttp's error
then says nothing of it, so each connection counts the bytes it received.
"""

from __future__ import annotations

import contextvars
import functools
import weakref
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler


class _Counted(ResponseHandler):
    """aiohttp's connection protocol, which counts the bytes it received."""

    received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)

    def resume_reading(self, resume_parser: bool = True) -> None:
        # aiohttp resumes reading after every read of a body below its low-water mark, paused
        # or not: the parser fed nothing and the transport told to read again, each item of a
        # stream. Not paused, there is nothing to resume: the parser holds nothing back (it
        # stops only when paused) and the transport reads on.
        if self._reading_paused:
            super().resume_reading(resume_parser)


_REUSED: contextvars.ContextVar[tuple[_Counted, int] | None] = contextvars.ContextVar(
    "ometer_reused", default=None
)
"""The connection the request of this task went on last, and the bytes it had received then,
if it had served a request before."""


class Connections(aiohttp.TCPConnector):
    """aiohttp's pool, which tells each request whether its connection had served another."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._factory = functools.partial(_Counted, loop=self._loop)  # type: ignore[assignment]
        self._served: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(self, req: Any, *args: Any, **kwargs: Any) -> aiohttp.connector.Connection:
        conn = await super().connect(req, *args, **kwargs)
        protocol = conn.protocol
        if isinstance(protocol, _Counted) and protocol in self._served:
            _REUSED.set((protocol, protocol.received))
        else:
            _REUSED.set(None)
        self._served.add(protocol)
        return conn


def stale(exc: BaseException, body: object) -> bool:
    """Whether ``exc`` says a request never reached the server, lost on a kept-alive
    connection the server had closed (and ``body`` can be sent again): no byte of an answer
    came (aiohttp's "Server disconnected" says so; a reset or a broken pipe has none to
    say), and the connection had served a request before. A new connection's says nothing:
    the server may have taken the request; nor one that brought a byte before it broke."""
    reused = _REUSED.get()
    if reused is None or reused[0].received != reused[1]:
        return False
    if not (body is None or isinstance(body, bytes)):
        return False
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return isinstance(exc.message, str)  # else: part of an answer's head came
    return isinstance(exc, aiohttp.ClientOSError) and not isinstance(
        exc, aiohttp.ClientConnectorError
    )


def sending() -> None:
    """A request of this task is about to go: whatever connection it goes on is yet unknown."""
    _REUSED.set(None)
