"""Slots and the fair queue: which waiting call gets the next free place on a server.

Owns the places calls hold (:class:`Capacity`: a server's slots, a group's
concurrency limit) and the order in which waiting calls get them. Knows nothing
of HTTP, models or the ledger: where a call may go is a function it is given
(``place``), which the fleet's routing supplies.

**Fairness.** Waiting calls are kept per flow (a tenant's department). The next
free place goes to the flow with the smallest virtual start tag, and serving a
call moves its flow's tag on by ``1 / weight`` (start-time fair queueing, the
unit-cost form of weighted fair queueing and deficit round robin). So with
weights 2 and 1 the first flow gets two places for each of the second's, and a
flow that floods the queue with 1,000 calls delays another flow's call by at
most one place, never by its 1,000. A flow that was idle starts at the current
virtual time: idleness earns no credit.

**Bounds.** At most ``max_queue`` calls wait. When the queue is full, a call of
a flow shorter than the longest one takes the place of that flow's newest call
(which is answered "busy"); otherwise the new call is. So a flood cannot keep
another department out of the queue either. Memory is one small object per
waiting call; a flow with no waiting call is forgotten.

**Correct under cancellation.** Places are counted when granted, synchronously,
on the event loop, so no interleaving can put more than ``limit`` calls on a
capacity. A caller that leaves while waiting is taken out of the queue; one that
leaves just after its place was granted gives the place back at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from fractions import Fraction

from ollama_meter.errors import ServerBusy

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
"""Ollama's own words when its queue is full (``OLLAMA_MAX_QUEUE``); the gateway says the same."""


Busy = ServerBusy
"""No place now and none to wait for: the queue is full, or the wait was too long."""


class Capacity:
    """Places calls hold at once: ``limit`` of them (None: no limit)."""

    __slots__ = ("in_use", "limit", "name")

    def __init__(self, limit: int | None, name: str = "") -> None:
        self.limit = limit
        self.in_use = 0
        self.name = name

    @property
    def free(self) -> bool:
        return self.limit is None or self.in_use < self.limit

    def __repr__(self) -> str:
        return f"Capacity({self.name!r}, {self.in_use}/{self.limit})"


Tag = int | Fraction
"""A flow's virtual start tag, and the queue's virtual time: exact, an int while every
weight is 1."""

Place = Callable[[], Capacity | None]
"""Where a waiting call could go right now (a server's slots with room), or None."""

Where = Hashable
"""What a :data:`Place` answers from (the fleet's: the model and the servers it may not use):
calls with the same ``where`` and limits find the same place, so while the queue looks for
the next call to serve, one that found none speaks for every other like it. Without one a
call's place is its own (its :data:`Place` function)."""


class Grant:
    """A place a call holds: on ``server``, counted against ``caps``. Give it back with :meth:`release`."""

    __slots__ = ("_flow", "_queue", "caps", "granted_ns", "released", "server", "waited_ns")

    def __init__(
        self,
        queue: FairQueue,
        flow: _Flow,
        server: Capacity,
        caps: tuple[Capacity, ...],
        waited_ns: int,
    ) -> None:
        self._queue = queue
        self._flow = flow
        self.server = server
        self.caps = caps
        self.waited_ns = waited_ns
        self.granted_ns = queue.clock()
        self.released = False

    def release(self) -> None:
        """Give the place back (idempotent); the next waiting call may take it at once."""
        if not self.released:
            self.released = True
            self._queue._release(self)


class _Waiter:
    __slots__ = ("caps", "flow", "future", "like", "place", "since_ns")

    def __init__(
        self,
        flow: _Flow,
        place: Place,
        caps: tuple[Capacity, ...],
        future: asyncio.Future[Grant],
        since_ns: int,
        where: Where | None,
    ) -> None:
        self.flow = flow
        self.place = place
        self.caps = caps
        self.future = future
        self.since_ns = since_ns
        self.like = (place if where is None else where, caps)
        """Waiters alike find the same place, or none (:data:`Where`)."""


class _Flow:
    __slots__ = ("key", "order", "serving", "tag", "waiters", "weight")

    def __init__(self, key: Hashable, tag: Tag, order: int) -> None:
        self.key = key
        self.tag = tag
        self.order = order
        self.weight = 1
        self.serving = 0
        self.waiters: deque[_Waiter] = deque()


class FairQueue:
    """Calls waiting for a place, served by weighted fair queueing across flows."""

    def __init__(self, max_queue: int, *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be 0 or more")
        self.max_queue = max_queue
        self.clock = clock
        self._flows: dict[Hashable, _Flow] = {}
        self._urgent: deque[_Waiter] = deque()
        self._waiting = 0
        self._virtual: Tag = 0
        self._order = 0
        self._granted = 0
        self._hold_ns = 1_000_000_000.0  # a running mean of how long places are held

    # -- what it holds ------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def in_service(self) -> int:
        return self._granted

    def waiting_by_flow(self) -> dict[Hashable, int]:
        """Calls waiting per flow, those moving off a failed server (ahead of the flows) too."""
        waiting = {key: len(flow.waiters) for key, flow in self._flows.items()}
        for waiter in self._urgent:
            key = waiter.flow.key
            waiting[key] = waiting.get(key, 0) + 1
        return waiting

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely to free: a held place's mean time, shared."""
        return max(1, math.ceil(self._hold_ns / max(1, self._granted) / 1e9))

    # -- waiting --------------------------------------------------------------------------

    async def acquire(
        self,
        flow: Hashable,
        place: Place,
        *,
        weight: int = 1,
        caps: Sequence[Capacity] = (),
        timeout: float | None = None,
        urgent: bool = False,
        where: Where | None = None,
    ) -> Grant:
        """A place for one call of ``flow``: at once if one is free, else after waiting its turn.

        ``caps`` must all have room too (a department's concurrency limit). ``urgent``
        (a call moving off a failed server) goes before every flow. Raises :class:`Busy`
        when the queue is full or ``timeout`` seconds pass; a cancelled caller leaves
        the queue, and gives back a place granted to it meanwhile.
        """
        loop = asyncio.get_running_loop()
        waiter = self._enqueue(flow, place, max(1, weight), tuple(caps), loop, urgent, where)
        try:  # from here on, however it ends, the waiter leaves the queue or holds its place
            self._dispatch()
            _not_waited(waiter)
            if self._waiting > self.max_queue and not waiter.future.done():
                self._shed(waiter)
            if timeout is None:
                return await waiter.future
            async with asyncio.timeout(timeout):
                return await waiter.future
        except BaseException as exc:
            self._leave(waiter)
            if isinstance(exc, TimeoutError):
                raise Busy(
                    f"{BUSY_MESSAGE} (waited {timeout:g} s for a free slot)",
                    retry_after=self.retry_after(),
                ) from None
            raise

    async def move(
        self,
        grant: Grant,
        place: Place,
        *,
        timeout: float | None = None,
        where: Where | None = None,
    ) -> Grant:
        """Another place for the call holding ``grant`` (its server failed it): before every flow.

        Only the server's place is given back (the next waiting call may take it); the
        caps stay the call's, so its department's queued calls do not take its place
        among the department's running calls and go ahead of it. Raises as
        :meth:`acquire` does; the caps are then given back too.
        """
        caps, grant.caps = grant.caps, ()
        flow = grant._flow
        grant.release()  # the server's place alone
        try:
            moved = await self.acquire(
                flow.key, place, weight=flow.weight, timeout=timeout, urgent=True, where=where
            )
        except BaseException:
            for cap in caps:  # the call ends here: its caps go back, and who waited for them goes
                cap.in_use -= 1
            self._dispatch()
            raise
        moved.caps = caps
        return moved

    def grant_now(
        self,
        flow: Hashable,
        place: Place,
        *,
        weight: int = 1,
        caps: Sequence[Capacity] = (),
        where: Where | None = None,
    ) -> Grant | None:
        """A place at once when nobody waits and one is free (no waiting, no task); else None.

        What :meth:`acquire` does for a call served at once, without a waiter, a future or a
        look through the flows (nobody waits: none is ahead of it, ``where`` is of no use)."""
        if self._waiting or not all(cap.free for cap in caps):
            return None
        server = place()
        if server is None or not server.free:
            return None
        key, caps = flow, tuple(caps)
        served = self._flows.get(key)
        if served is None:
            self._order += 1
            served = self._flows[key] = _Flow(key, self._virtual, self._order)
        else:  # with nobody waiting, it has no waiter: idle time earns no credit
            served.tag = max(served.tag, self._virtual)
        served.weight = max(1, weight)
        self._serve(served, server, caps)
        return Grant(self, served, server, caps, 0)

    def _enqueue(
        self,
        key: Hashable,
        place: Place,
        weight: int,
        caps: tuple[Capacity, ...],
        loop: asyncio.AbstractEventLoop,
        urgent: bool,
        where: Where | None,
    ) -> _Waiter:
        flow = self._flows.get(key)
        if flow is None:
            self._order += 1
            flow = _Flow(key, self._virtual, self._order)
            if not urgent:  # an urgent call waits outside the flows
                self._flows[key] = flow
        elif not flow.waiters and not urgent:
            flow.tag = max(flow.tag, self._virtual)  # idle time earns no credit
        flow.weight = weight
        waiter = _Waiter(flow, place, caps, loop.create_future(), self.clock(), where)
        if urgent:
            self._urgent.append(waiter)
        else:
            flow.waiters.append(waiter)
        self._waiting += 1
        return waiter

    def _shed(self, newcomer: _Waiter) -> None:
        """One call too many waits: the newest of the longest flow leaves, answered busy.

        That is the newcomer unless another flow is longer than the newcomer's, so a
        flood cannot keep another department out of the queue.
        """
        if newcomer in self._urgent:
            return  # moving off a failed server: it already waited its turn
        own = newcomer.flow
        longest = max(self._flows.values(), key=lambda f: (len(f.waiters), f.tag))
        shed = longest if len(longest.waiters) > len(own.waiters) else own
        pushed = shed.waiters.pop()
        self._waiting -= 1
        self._forget_if_idle(shed)
        # A caller that hung up is still in line until its task runs again: taking it out
        # makes the room (its leaving then finds nothing to remove).
        if not pushed.future.done():
            pushed.future.set_exception(Busy(BUSY_MESSAGE, retry_after=self.retry_after()))

    def _leave(self, waiter: _Waiter) -> None:
        """A caller stops waiting (cancelled, timed out): out of the queue, its place given back."""
        future = waiter.future
        if not future.done() or future.cancelled():
            self._remove(waiter)
        elif future.exception() is None:
            future.result().release()  # granted just as the caller left

    def _remove(self, waiter: _Waiter) -> None:
        flow = waiter.flow
        for line in (flow.waiters, self._urgent):
            try:
                line.remove(waiter)
            except ValueError:
                continue
            self._waiting -= 1
            break
        self._forget_if_idle(flow)

    def _forget_if_idle(self, flow: _Flow) -> None:
        # A flow with calls in service is kept: its tag says how much it was just given.
        if not flow.waiters and not flow.serving and self._flows.get(flow.key) is flow:
            del self._flows[flow.key]

    # -- serving --------------------------------------------------------------------------

    def reweigh(self, weight_of: Callable[[Hashable], int]) -> None:
        """Weights changed: every flow's next calls get their new share, not only its newcomers'."""
        for flow in self._flows.values():
            flow.weight = max(1, weight_of(flow.key))

    def kick(self) -> None:
        """Places may have opened outside the queue (a server came back): serve who can go."""
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting:
            chosen = self._next()
            if chosen is None:
                return
            waiter, server = chosen
            self._grant(waiter, server)

    def _next(self) -> tuple[_Waiter, Capacity] | None:
        """The next call to serve and its place: the first urgent one that has a place, else
        the first in fair order. A call like one that found none is passed over without
        asking (``place`` is asked once per kind of call, not once per call: a thousand
        calls waiting for one full server were each asked on every arrival and release)."""
        placeless: set[tuple[Hashable, tuple[Capacity, ...]]] = set()
        for waiter in self._urgent:
            if (server := _placed(waiter, placeless)) is not None:
                return waiter, server
        for flow in sorted(self._flows.values(), key=lambda f: (f.tag, f.order)):
            for waiter in flow.waiters:
                if (server := _placed(waiter, placeless)) is not None:
                    return waiter, server
        return None

    def _grant(self, waiter: _Waiter, server: Capacity) -> None:
        flow = waiter.flow
        urgent = waiter in self._urgent
        if urgent:
            self._urgent.remove(waiter)
        else:
            flow.waiters.remove(waiter)
        self._waiting -= 1
        self._serve(flow, server, waiter.caps, urgent=urgent)
        waited = self.clock() - waiter.since_ns
        waiter.future.set_result(Grant(self, flow, server, waiter.caps, waited))

    def _serve(
        self, flow: _Flow, server: Capacity, caps: tuple[Capacity, ...], *, urgent: bool = False
    ) -> None:
        """Count a place given to a call of ``flow``: its flow's turn moves on (but for an
        urgent call's, which already waited its turn), the places are taken."""
        if not urgent:
            self._virtual = max(self._virtual, flow.tag)
            flow.tag = max(flow.tag, self._virtual) + _step(flow.weight)
        flow.serving += 1
        server.in_use += 1
        for cap in caps:
            cap.in_use += 1
        self._granted += 1

    def _release(self, grant: Grant) -> None:
        grant.server.in_use -= 1
        for cap in grant.caps:
            cap.in_use -= 1
        self._granted -= 1
        grant._flow.serving -= 1
        self._forget_if_idle(grant._flow)
        held = self.clock() - grant.granted_ns
        self._hold_ns += (held - self._hold_ns) / 8
        self._dispatch()


def _step(weight: int) -> Tag:
    """How far serving a call moves its flow's tag on: ``1 / weight`` (exact; an int for 1)."""
    return 1 if weight == 1 else Fraction(1, weight)


def _not_waited(waiter: _Waiter) -> Grant | None:
    """The place ``waiter`` got as it asked, if it did: it waited for nothing (0 ns), however
    long the queue's own bookkeeping took."""
    future = waiter.future
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    grant = future.result()
    grant.waited_ns = 0
    return grant


def _placed(
    waiter: _Waiter, placeless: set[tuple[Hashable, tuple[Capacity, ...]]]
) -> Capacity | None:
    """Where ``waiter`` can go now, if anywhere; ``placeless``: the kinds of call that found
    nowhere in this look (their places do not change within it), this one's added if so."""
    # A cancelled caller's future is done before its task runs again to leave the queue.
    if waiter.future.done() or waiter.like in placeless:
        return None
    server = None
    if all(cap.free for cap in waiter.caps):
        server = waiter.place()
    if server is None or not server.free:
        placeless.add(waiter.like)
        return None
    return server
