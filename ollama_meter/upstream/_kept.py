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
it (a POST computed twice), and the one retry policy decides.
"""

from __future__ import annotations

import contextvars
import weakref
from typing import Any

import aiohttp

_REUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("ometer_reused", default=False)
"""Whether the connection the request of this task went on last had served one before."""


class Connections(aiohttp.TCPConnector):
    """aiohttp's pool, which tells each request whether its connection had served another."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._served: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(self, req: Any, *args: Any, **kwargs: Any) -> aiohttp.connector.Connection:
        conn = await super().connect(req, *args, **kwargs)
        _REUSED.set(conn.protocol in self._served)
        self._served.add(conn.protocol)
        return conn


def stale(exc: BaseException, body: object) -> bool:
    """Whether ``exc`` says a request never reached the server, lost on a kept-alive
    connection the server had closed (and ``body`` can be sent again): no byte of an answer
    came (aiohttp's "Server disconnected" says so; a reset or a broken pipe has none to
    say), and the connection had served a request before. A new connection's says nothing:
    the server may have taken the request."""
    if not _REUSED.get() or not (body is None or isinstance(body, bytes)):
        return False
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return isinstance(exc.message, str)  # else: part of an answer's head came
    return isinstance(exc, aiohttp.ClientOSError) and not isinstance(
        exc, aiohttp.ClientConnectorError
    )


def sending() -> None:
    """A request of this task is about to go: whatever connection it goes on is yet unknown."""
    _REUSED.set(False)
