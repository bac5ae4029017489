"""What the app's reads and answer of one request do on its connection (uvicorn's cycle).

``_server``'s protocol wraps each request's ``receive`` and ``send`` with these (:func:`watch`),
so that the app hears what only the parser knows (the rest of the body cannot be parsed, the
connection is lost) and the connection is not kept for a body nobody will read.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ollama_meter.gateway._memory import GONE, Unparsable

LEFT = "ometer.left"
"""The scope's key for a future done when the request's caller has hung up: when its cycle is
told ``disconnected`` (uvicorn's reads then say ``http.disconnect``). A call listens to it
while it waits and answers (``_slots``), with no task of its own reading for the news."""


class BodyNews:
    """What the app's reads of a request's body must hear from the parser: it broke."""

    __slots__ = ("broken", "told")

    def __init__(self) -> None:
        self.broken: str | None = None
        self.told = False


def watch(cycle: RequestResponseCycle, gone: asyncio.Future[None]) -> BodyNews:
    """Wrap the request's reads and answer; name in its scope the connection's ``gone``
    (:data:`GONE`). Returns the news of its body, for the parser to tell."""
    body = BodyNews()
    cycle.scope[GONE] = gone  # type: ignore[literal-required]
    cycle.scope[LEFT] = gone.get_loop().create_future()  # type: ignore[literal-required]
    cycle.send = closing_early(cycle)  # type: ignore[method-assign,assignment]
    cycle.receive = hearing_breaks(cycle, body)  # type: ignore[method-assign,assignment]
    return body


# The wrappers below are kept by their cycle (its ``send`` and ``receive``), so they reach it
# weakly, and uvicorn's own methods unbound: held strongly, each request's cycle (its scope,
# its futures, the wrappers) was a reference cycle, freed only by the cyclic collector (27
# objects a request; a collection of 3 ms every 200 calls). Their request's task keeps the
# cycle alive while the app may call them.
_SEND = RequestResponseCycle.send
_RECEIVE = RequestResponseCycle.receive
_ENDED = {"type": "http.disconnect"}


def hear_lost(cycle: RequestResponseCycle | None) -> None:
    """Tell the request of ``cycle`` that its caller has gone, if its connection's loss told
    the cycle so (uvicorn tells the last request parsed, not one before it still running)."""
    if cycle is None or not cycle.disconnected:
        return
    left = cycle.scope.get(LEFT)
    if isinstance(left, asyncio.Future) and not left.done():
        left.set_result(None)


def hearing_breaks(cycle: RequestResponseCycle, body: BodyNews) -> Callable[[], Awaitable[Any]]:
    """``cycle.receive``, raising :class:`Unparsable` once (a read waiting, or the next) when
    the rest of the request's body cannot be parsed: uvicorn would answer 400 itself and
    close, the app's read hearing a hang-up, its span a ``client_abort`` that was none.
    Afterwards, reads wait for the caller to hang up, as they do once a body has ended."""
    weak = weakref.ref(cycle)

    async def hear() -> Any:
        cycle = weak()
        if cycle is None:  # its request is over
            return dict(_ENDED)
        if body.broken is None or body.told:
            message = await _RECEIVE(cycle)
            if body.broken is None or body.told or message["type"] != "http.request":
                return message
        if cycle.disconnected:
            return await _RECEIVE(cycle)
        body.told = True
        raise Unparsable(body.broken)

    return hear


def closing_early(cycle: RequestResponseCycle) -> Callable[[Any], Awaitable[None]]:
    """``cycle.send``, with an answer that starts before the request's body has ended closing
    the connection (``connection: close``). uvicorn would read the rest of that body and throw
    it away, each read putting off the idle connection's timeout with none of its own: a byte
    now and then held the connection for ever (a 404, a refusal, a GET's unread body).

    A whole answer (its length said in its head) leaves in one write with its body's first
    part (:class:`_HeadHeld`); a streamed one's head leaves at once, before its first item.

    A streamed answer to an HTTP/1.0 request is its bytes as they come, its end the
    connection's close: uvicorn chunked it whatever the request's version, which HTTP/1.0 has
    no chunks for (RFC 9112 §6.1), so a 1.0 client read each chunk's size as part of it."""
    weak = weakref.ref(cycle)
    by_close = False  # this answer's end is the connection's close (HTTP/1.0, no length)

    async def answer(message: Any) -> None:
        nonlocal by_close
        cycle = weak()
        if cycle is None:  # its request is over: nothing goes anywhere (as uvicorn's, closed)
            return
        kind = message["type"]
        if kind == "http.response.start":
            if cycle.more_body:
                cycle.keep_alive = False
            if _whole(message):
                cycle.transport = _HeadHeld(cycle.transport)  # type: ignore[assignment]
            elif cycle.scope.get("http_version") == "1.0":
                by_close = True
                cycle.keep_alive = False  # the close is what says the answer has ended
                cycle.chunked_encoding = False  # uvicorn then writes no transfer-encoding
            await _SEND(cycle, message)
            return
        if by_close and kind == "http.response.body":
            # uvicorn writes an unchunked body against the length its head said: this part's.
            cycle.expected_content_length = len(message.get("body", b""))
        held: Any = cycle.transport
        if kind != "http.response.body" or type(held) is not _HeadHeld:
            await _SEND(cycle, message)
            return
        try:
            await _SEND(cycle, message)
        finally:
            cycle.transport = held.transport
            held.flush()  # a HEAD answer's, or one whose send wrote nothing

    return answer


def _whole(message: Any) -> bool:
    """Whether an answer's start says its length: its body follows at once, whole."""
    return any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))


class _HeadHeld:
    """A request's transport from its answer's start to its body's first part: the head
    (status line and headers) is held and written with that part, in one write.

    Written apart, each whole answer was two segments, and its client woke twice for it (on
    a loaded machine, taking the gateway's core between the two). Anything else is the
    transport's own; closing writes the head first, as it would have been."""

    __slots__ = ("_started", "head", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started:  # the answer's start: its head
            self._started, self.head = True, data
            return
        head, self.head = self.head, None
        if head is None:
            self.transport.write(data)
        else:
            self.transport.writelines((head, data))

    def flush(self) -> None:
        head, self.head = self.head, None
        if head is not None and not self.transport.is_closing():
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)
