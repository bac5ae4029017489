"""A caller's wait for a slot: taken at once when one is free, else its turn in the fair queue.

Owns what waiting means for an HTTP caller: a plain request is not cancelled
when its client leaves (only reading or writing would tell), so while a call
queues the gateway listens for the hang-up itself, and a caller that leaves is
taken out of the queue (:class:`CallerGone`). A call is journaled as it leaves the
queue, not before. A slot is held until the answer has been sent, or abandoned
(:class:`Holding`); a stream's, until Ollama's answer has ended, read on ahead of a slow
caller within bounds (``_ahead``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ollama_meter.gateway._cycle import LEFT
from ollama_meter.gateway._fleet import Fleet, Lease
from ollama_meter.gateway._memory import Unread
from ollama_meter.gateway._rates import Admission
from ollama_meter.meter import Meter, MeteredCall

T = TypeVar("T")
Hangup = Callable[[], Awaitable[object]] | asyncio.Future[None]
"""Returns when the caller has gone; or a future done then, that nobody but the server
completes or cancels."""


class CallerGone(Exception):
    """The caller hung up while its call waited for a slot."""


async def client_left(request: Request) -> None:
    """Returns when the client of ``request`` (whose body was read) hangs up."""
    while True:
        try:
            if (await request.receive())["type"] == "http.disconnect":
                return
        except Unread:  # a body left unread broke (``_server``): no news of the caller
            continue


def hangup_of(request: Request) -> Hangup:
    """What tells that the caller of ``request`` has gone: the future its connection's server
    completes then (``_cycle.LEFT``), else :func:`client_left` (another ASGI server)."""
    left: asyncio.Future[None] | None = request.scope.get(LEFT)
    return left if left is not None else functools.partial(client_left, request)


def _listen(hangup: Hangup) -> asyncio.Future[Any]:
    """A future done when the caller has gone: the server's own, or a task reading for it."""
    return hangup if isinstance(hangup, asyncio.Future) else asyncio.ensure_future(hangup())


async def take_slot(
    fleet: Fleet,
    meter: Meter,
    call: MeteredCall,
    model: str,
    admission: Admission,
    hangup: Hangup | None = None,
    recheck: Callable[[], Awaitable[object]] | None = None,
) -> Slot:
    """A slot for ``call`` to ``model``: at once when one is free and nobody waits, else in turn.

    ``recheck`` is awaited once a call that waited has its slot, before anything is sent:
    what was checked at the door (its key) may have changed meanwhile. What it raises is
    raised, the slot given back.

    The call is journaled only once it has its slot (it was opened ``queued``): were the
    process killed, a call still waiting would otherwise be recorded as interrupted and
    charged, though Ollama never had it. Raises :class:`CallerGone` if ``hangup`` returns
    first, and :class:`~ollama_meter.errors.ServerBusy` when the queue is full or the wait
    too long.
    """
    flow, weight, caps = admission.flow, admission.weight, admission.caps
    lease = fleet.lease_now(model, flow, weight=weight, caps=caps)
    if lease is None:
        # Cancelled when the caller leaves: the queue takes it out, or gives back a place
        # just granted.
        lease = await waited(fleet.lease(model, flow, weight=weight, caps=caps), hangup, recheck)
    call.span.queue_ns = (call.span.queue_ns or 0) + lease.waited_ns  # after its admission's
    call.span.upstream_host = lease.server.url
    meter.sending(call)
    return Slot(lease, recheck)


async def waited(
    wait: Awaitable[Lease], hangup: Hangup | None, recheck: Callable[[], Awaitable[object]] | None
) -> Lease:
    """The slot ``wait`` ends in, ``recheck`` awaited once it is granted: every wait of a call
    for a slot (its first, and another after its server failed it) ends here, so what was
    checked at the door is checked again however long and however often the call waited.
    What ``recheck`` raises is raised, the slot given back."""
    lease = await until_gone(wait, hangup)
    if recheck is not None:
        try:
            await recheck()
        except BaseException:
            lease.release()
            raise
    return lease


async def until_gone(work: Awaitable[T], hangup: Hangup | None) -> T:
    """``work``'s result; if the caller hangs up first, ``work`` is cancelled (its own handlers
    close what it opened: a place in the queue, the span, the connection to Ollama, which
    stops it) and :class:`CallerGone` is raised. A plain request is not cancelled when its
    client leaves: without this, Ollama would compute a whole answer for nobody.

    ``work`` runs in this task, which the hang-up cancels (as :func:`asyncio.timeout` does
    its own): no task of its own and no :func:`asyncio.wait`, twice a call."""
    if hangup is None:
        return await work
    task = asyncio.current_task()
    assert task is not None
    gone = _listen(hangup)
    cut = ended = False

    def cut_short(_: object) -> None:
        nonlocal cut
        if not ended:
            cut = True
            task.cancel()

    gone.add_done_callback(cut_short)
    try:
        return await work
    except asyncio.CancelledError:
        if cut:
            cut = False
            if task.uncancel() == 0:  # the hang-up's cancellation alone
                raise CallerGone from None
        raise
    finally:
        ended = True
        if gone is hangup:  # the server's: shared with the call's other waits
            gone.remove_done_callback(cut_short)
        else:
            gone.cancel()
        if cut:  # the work took the hang-up's cancellation and ended otherwise
            task.uncancel()


class Heard:
    """Whether the caller of an answer being sent has hung up, for the relay to ask as it goes.

    A write into a connection that is gone returns as if it were sent (ASGI 2.3: uvicorn),
    and the hang-up reaches the answer's sender as a cancellation only later: on uvloop, not
    for as long as more of the answer is there to read. A relay that went on writing into
    nothing read Ollama's whole answer for nobody, and recorded it ``ok``. Listening itself,
    it stops at its next write (:attr:`gone`), and never takes an answer for delivered whose
    caller has left (:meth:`left`).
    """

    __slots__ = ("_own", "_task")

    def __init__(self, hangup: Hangup | None) -> None:
        self._task = None if hangup is None else _listen(hangup)
        self._own = self._task is not hangup  # a task of its own, to stop when done

    @property
    def gone(self) -> bool:
        """The caller hung up (as far as has been heard)."""
        return self._task is not None and self._task.done()

    async def left(self) -> bool:
        """Whether the caller has hung up, a hang-up that has already happened heard first."""
        await asyncio.sleep(0)  # its news (queued as the connection was lost) comes before this
        return self.gone

    async def ending(self) -> asyncio.CancelledError | None:
        """How a call whose whole answer is in ends, by its caller: an abort if it has gone."""
        return asyncio.CancelledError() if await self.left() else None

    def close(self) -> None:
        if self._task is None or not self._own:
            return
        self._task.cancel()
        if self._task.done() and not self._task.cancelled():
            self._task.exception()  # read: a receive that failed says the caller is gone


class Slot:
    """The place a call holds now: moved when the call moves to another server, given back once.
    ``recheck`` is awaited as each wait for another place ends (:func:`waited`)."""

    __slots__ = ("lease", "recheck")

    def __init__(
        self, lease: Lease, recheck: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        self.lease: Lease | None = lease
        self.recheck = recheck

    async def move(self, wait: Awaitable[Lease]) -> Lease:
        """The place ``wait`` ends in, held from now on (the one before given back)."""
        lease = await waited(wait, None, self.recheck)
        self.release()
        self.lease = lease
        return lease

    def hand_over(self) -> Lease:
        """The lease, now the answer's to give back (:class:`Holding`), not this holder's."""
        lease, self.lease = self.lease, None
        assert lease is not None
        return lease

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None


class Holding(Response):
    """A response that gives its call's slot back when it has been sent, or abandoned.

    A stream's own ``finally`` runs only if the stream started; a client that leaves
    before the first byte must not keep the slot either.
    """

    def __init__(self, inner: Response, lease: Lease) -> None:
        self.inner = inner
        self.lease = lease
        self.status_code = inner.status_code
        self.background = None
        self.raw_headers = inner.raw_headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.lease.release()


class LastPart(bytes):
    """The part of a streamed answer that ends it: :class:`Streamed` sends it as the body's
    last, so the server writes it with the body's end (one write, where two woke the client
    twice at the end of every stream)."""


class Streamed(StreamingResponse):
    """Starlette's streamed answer, stopped when its caller hangs up, heard from the server's
    own news of it (``_cycle.LEFT``) in this task: Starlette's own (ASGI 2.3, as uvicorn speaks)
    ran the stream in a task group beside a task reading for the hang-up, each streamed call.
    The hang-up cancels the stream as that task group did; under another server, Starlette's.
    A :class:`LastPart` is sent with the body's end. However it ends, its relay is closed
    (a send that failed, or a hang-up heard at one, leaves it suspended): its span is
    written and its reads of Ollama closed then, not by the event loop's finalizer."""

    async def stream_response(self, send: Any) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        ended = False
        async for chunk in self.body_iterator:
            part = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
            ended = type(part) is LastPart  # the iterator ends after it
            await send({"type": "http.response.body", "body": part, "more_body": not ended})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        left = scope.get(LEFT)
        try:
            if scope["type"] != "http" or not isinstance(left, asyncio.Future):
                await super().__call__(scope, receive, send)
                return
            # Stopped by a hang-up as Starlette's task group stopped it: nobody is there to read it.
            with contextlib.suppress(CallerGone):
                await until_gone(self.stream_response(send), left)
        finally:
            if isinstance(self.body_iterator, AsyncGenerator):  # ended: a no-op
                await self.body_iterator.aclose()
        if self.background is not None:
            await self.background()
