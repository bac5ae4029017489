"""A caller's wait for a slot: taken at once when one is free, else its turn in the fair queue.

Owns what waiting means for an HTTP caller: a plain request is not cancelled
when its client leaves (only reading or writing would tell), so while a call
queues the gateway listens for the hang-up itself, and a caller that leaves is
taken out of the queue (:class:`CallerGone`). A call is journaled as it leaves the
queue, not before. A slot is held until the answer has been sent, or abandoned
(:class:`Holding`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ollama_meter.gateway._fleet import Fleet, Lease
from ollama_meter.gateway._rates import Admission
from ollama_meter.meter import Meter, MeteredCall

T = TypeVar("T")
Hangup = Callable[[], Awaitable[object]]
"""Returns when the caller has gone."""


class CallerGone(Exception):
    """The caller hung up while its call waited for a slot."""


async def client_left(request: Request) -> None:
    """Returns when the client of ``request`` (whose body was read) hangs up."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def take_slot(
    fleet: Fleet,
    meter: Meter,
    call: MeteredCall,
    model: str,
    admission: Admission,
    hangup: Hangup | None = None,
) -> Slot:
    """A slot for ``call`` to ``model``: at once when one is free and nobody waits, else in turn.

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
        lease = await until_gone(fleet.lease(model, flow, weight=weight, caps=caps), hangup)
    call.span.queue_ns = lease.waited_ns
    call.span.upstream_host = lease.server.url
    meter.sending(call)
    return Slot(lease)


async def until_gone(work: Awaitable[T], hangup: Hangup | None) -> T:
    """``work``'s result; if the caller hangs up first, ``work`` is cancelled (its own handlers
    close what it opened: a place in the queue, the span, the connection to Ollama, which
    stops it) and :class:`CallerGone` is raised. A plain request is not cancelled when its
    client leaves: without this, Ollama would compute a whole answer for nobody."""
    if hangup is None:
        return await work
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(hangup())
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((task,))
    if task.cancelled():
        raise CallerGone
    return task.result()


class Slot:
    """The place a call holds now: moved when the call moves to another server, given back once."""

    __slots__ = ("lease",)

    def __init__(self, lease: Lease) -> None:
        self.lease: Lease | None = lease

    def move(self, lease: Lease) -> None:
        self.release()
        self.lease = lease

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
