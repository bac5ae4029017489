"""The ``ollama`` client's kept-alive connections that Ollama closed: as the gateway's (``_kept.py``).

A request that went out on a kept-alive connection as Ollama closed it (idle too long, or
restarting) comes back with not a byte of an answer, and httpx sends nothing again: the
CLI or the Python API said "cannot reach Ollama" of a server that was up, retries off.
Such a request is sent again here, within its one attempt: no retry counted, no breaker
charged. One lost on a new connection is never sent again here: Ollama may have taken it.
"""

from __future__ import annotations

from typing import Any

import httpx

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
        self.opened = self.opened or event.startswith("connection.connect_")
        if self._theirs is not None:
            self._theirs(event, info)

    async def aheard(self, event: str, info: dict[str, Any]) -> None:
        self.opened = self.opened or event.startswith("connection.connect_")
        if self._theirs is not None:
            await self._theirs(event, info)

    def lost(self, exc: BaseException, request: httpx.Request) -> bool:
        """Whether ``exc`` lost ``request`` on a kept-alive connection, before any answer,
        and its body can go again (bytes, as the ``ollama`` client sends)."""
        if self.opened or not isinstance(request.stream, httpx.ByteStream):
            return False
        if isinstance(exc, httpx.RemoteProtocolError):
            return "without sending a response" in str(exc)  # httpcore's words: no byte came
        return True


class KeptTransport(httpx.HTTPTransport):
    """httpx's transport, sending again a request lost on a kept-alive connection."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        theirs = request.extensions.get("trace")
        for sent in range(1, MOST_SENT + 1):
            connections = _Connections(theirs)
            request.extensions = {**request.extensions, "trace": connections.heard}
            try:
                return super().handle_request(request)
            except LOST as exc:
                if sent == MOST_SENT or not connections.lost(exc, request):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncKeptTransport(httpx.AsyncHTTPTransport):
    """:class:`KeptTransport` on the event loop."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        theirs = request.extensions.get("trace")
        for sent in range(1, MOST_SENT + 1):
            connections = _Connections(theirs)
            request.extensions = {**request.extensions, "trace": connections.aheard}
            try:
                return await super().handle_async_request(request)
            except LOST as exc:
                if sent == MOST_SENT or not connections.lost(exc, request):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
