"""How much of its callers' request bodies one gateway holds in memory at once.

A body is read whole before its call goes on (the model and the attribution are in it) and
kept, with its parsed JSON, until the answer is done: about three times its size in all
(40 prompts of 31 MB at once took the process from 105 MB to 3.9 GB). Bounded per request
alone (``--max-body-bytes``), a few hundred large prompts at once could take every byte of
the machine, and the kernel's OOM killer then took the gateway with every call in flight.

So the bodies held at once are bounded too: :data:`BODIES_HELD` times the largest one
(256 MiB of bodies by default, under 1 GB of memory). Room is taken as the bytes arrive,
not as a ``Content-Length`` promises them (a caller that declares 32 MiB and sends nothing
holds none: eight of them would otherwise have shut everyone out). A request whose next
bytes do not fit waits (the rest wait in the network, unread) until earlier requests
finish, at most :data:`ROOM_WAIT_S`, then is answered 503 with ``Retry-After``; a caller
that hangs up meanwhile ends its wait at once, as a ``client_abort`` (:data:`GONE`). When
every request holding room waits for more (bodies that came in side by side, each holding a
part: none would ever finish to give room back), the last to wait is read to its end past
the room, by less than one body: the others then wait for its answer, as for any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

BODY_S = 60.0
"""Seconds a request body may take to arrive, and :data:`BODY_S_PER_PART` more per
:data:`BODY_PART` bytes of it (32 MiB: 9.5 minutes, at 60 KiB/s): a caller that trickles its
body (a byte every 10 s) would hold its connection, and the room it took, for ever."""
BODY_PART = 64 * 1024
BODY_S_PER_PART = 1.0
BODIES_HELD = 8
"""How many of the largest allowed bodies one gateway holds at once."""
ROOM_WAIT_S = 30.0
_MEMORY = "ometer.memory"
GONE = "ometer.gone"
"""The scope's key for a future done when the request's connection is lost (``_server``): a
body waiting for room is read by nobody, so no ``http.disconnect`` would tell of it. A caller
that hung up went on waiting the whole :data:`ROOM_WAIT_S`, and its span said ``server_busy``."""
_HELD = "ometer.held"


class Unread(Exception):
    """A request body refused before it was read: the status and headers to answer with."""

    status = 413
    error_type = "bad_request"
    retry_after: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The connection is done: the rest of the body may still be arriving."""
        wait = {} if self.retry_after is None else {"Retry-After": self.retry_after}
        return {"Connection": "close", **wait}


class TooLarge(Unread):
    """The request body is over the gateway's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body is larger than {limit} bytes, the gateway's limit "
            "(`ometer serve --max-body-bytes`, OMETER_MAX_BODY_BYTES)"
        )


class TooSlow(Unread):
    """The request body did not arrive in the time its size allows (:data:`BODY_S`)."""

    status = 408

    def __init__(self, received: int, declared: str, took: float) -> None:
        of = f" of {declared}" if declared.isdigit() else ""
        super().__init__(
            f"the request body did not arrive in time ({received}{of} bytes in {took:g} s; "
            f"a body may take {BODY_S:g} s, and {BODY_S_PER_PART:g} s more per "
            f"{BODY_PART // 1024} KiB); send it at once"
        )


class Unparsable(Unread):
    """The rest of the request body cannot be parsed (HTTP's framing, not its JSON): the
    server reads no more of the connection, and the app answers the request 400."""

    status = 400


class NoRoom(Unread):
    """The bodies the gateway holds leave no room for this one, and none was freed in time."""

    status = 503
    error_type = "server_busy"
    retry_after = "1"

    def __init__(self, most: int, waited: float) -> None:
        super().__init__(
            f"the gateway holds as many request bodies as it takes ({most:,} bytes, "
            f"{BODIES_HELD} times --max-body-bytes) and none was done within "
            f"{waited:g} s; retry shortly"
        )


class BodyMemory:
    """ASGI middleware: the room for bodies, shared by every request of one gateway app.

    A request takes its room as its body is read (:func:`take`) and gives it back when its
    answer is done, however it ends (this wraps the whole request). One event loop runs the
    app, so the count needs no lock: giving room back never waits (a lock there, in a
    cancelled request's cleanup, could wait for ever).
    """

    def __init__(self, app: ASGIApp, *, most: int, wait: float | None = None) -> None:
        self.app = app
        self.most = most
        self.wait = ROOM_WAIT_S if wait is None else wait
        self.held = 0
        self._waiting: list[asyncio.Future[None]] = []
        self._holders = 0  # requests that hold room
        self._stuck = 0  # of them, those waiting for more

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[_MEMORY] = self
        try:
            await self.app(scope, receive, send)
        finally:
            size = scope.pop(_HELD, 0)
            if size:
                self.held -= size
                self._holders -= 1
                for waiter in self._waiting:  # each looks again whether it fits now
                    if not waiter.done():
                        waiter.set_result(None)

    async def hold(self, scope: Scope, size: int) -> None:
        """Take ``size`` more bytes of room for this request, waiting for it; :class:`NoRoom`,
        or ``ClientDisconnect`` when its caller hangs up meanwhile."""
        if size <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        holding = _HELD in scope
        gone: asyncio.Future[None] | None = scope.get(GONE)
        # Refused only after a wait that timed out: the loop has then run all that was due by
        # the deadline, so a hang-up due before it (a process paused past the wait) is heard first.
        timed_out = False
        while self.held + size > self.most:
            if gone is not None and gone.done():
                raise ClientDisconnect  # no room is waited for nobody
            if holding and self._stuck == self._holders - 1:
                break  # every other request holding room waits for more: this one goes on
            if timed_out and loop.time() >= deadline:
                raise NoRoom(self.most, self.wait)
            waiter = loop.create_future()
            self._waiting.append(waiter)
            self._stuck += holding
            try:  # woken by room given back: looked at once more, never refused before a timeout
                done, _ = await asyncio.wait(
                    (waiter,) if gone is None else (waiter, gone),
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                timed_out = not done
            finally:
                self._stuck -= holding
                self._waiting.remove(waiter)
        if not holding:
            self._holders += 1
        self.held += size
        scope[_HELD] = scope.get(_HELD, 0) + size


async def take(scope: Scope, size: int) -> None:
    """Take room for ``size`` more bytes of a body, when the app runs under :class:`BodyMemory`."""
    memory: Any = scope.get(_MEMORY)
    if memory is not None:
        await memory.hold(scope, size)


def body_memory(max_body_bytes: int) -> Middleware:
    """The middleware as the app declares it: room for :data:`BODIES_HELD` largest bodies."""
    return Middleware(BodyMemory, most=BODIES_HELD * max_body_bytes)


async def read_body(
    request: Request, limit: int, then: Callable[[], Awaitable[object]] | None = None
) -> bytes:
    """The body, or :class:`TooLarge` as soon as it passes ``limit`` (before, when it says so).

    ``then`` is awaited once the body is read when it did not come whole in its first part:
    what was checked as the headers came (a key, revoked meanwhile) is checked again after the
    caller's wait, which may be minutes. What it raises is raised.

    Each part takes its room as it arrives (:func:`take`); :class:`NoRoom` when there is
    none in time; :class:`TooSlow` when the caller takes longer to send it than its size
    allows (the wait for room is the gateway's, not counted).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit)
    body = bytearray()  # not a list of the parts: a part of a few bytes costs 35 more in Python
    size = 0
    waited = 0.0  # on the caller: not on room for the body (the gateway's own wait)
    loop = asyncio.get_running_loop()
    receive = request.receive  # read as Starlette's ``stream()`` does, without its generator
    more = True  # and the empty part it ends with: a small body is one message, one read
    parts = 0
    allowed = BODY_S
    timer = asyncio.timeout(None)  # one for the reads, set before each
    try:
        async with timer:
            while more:
                allowed = BODY_S + size // BODY_PART * BODY_S_PER_PART
                began = loop.time()
                timer.reschedule(began + allowed - waited)
                message = await receive()
                parts += 1
                timer.reschedule(None)
                waited += loop.time() - began
                kind = message["type"]
                if kind == "http.disconnect":
                    raise ClientDisconnect
                if kind != "http.request":
                    continue
                part, more = message.get("body", b""), message.get("more_body", False)
                size += len(part)
                if size > limit:
                    raise TooLarge(limit)
                if part:
                    await take(request.scope, len(part))
                    body += part
    except TimeoutError:
        if not timer.expired():
            raise
        raise TooSlow(size, declared, allowed) from None
    if then is not None and parts > 1:
        await then()
    return bytes(body)
