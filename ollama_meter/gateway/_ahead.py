"""A streamed answer read on ahead of a caller slow to take it, so its slot goes back with Ollama's end.

A call's slot stands for Ollama's work on it. A stream was read from Ollama only as fast as
its caller took it, so a caller reading slowly (a slow link, or on purpose, never still long
enough to be hung up on: ``_server.STALLED_S``) kept its slot, and every other department's
calls waited behind its reading, long after Ollama had finished. Here the answer is read on
in a task of its own, into memory the consumer empties; when Ollama's answer has ended (or
broken off) the slot is given back (``ended``), and the rest waits for the caller.

**Bounds.** A call holds at most :data:`CALL_BYTES` read ahead, and all calls of a gateway
at most :data:`GATEWAY_BYTES` (:class:`AheadBytes`), each one read past them at most (what
the consumer held anyway). Past a bound the answer is read only as the caller takes it, as
before: Ollama waits on the caller, whose call keeps its slot (a caller that takes nothing is
still hung up on). Items are never reordered, and what broke the read reaches the caller
after the items read before it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable

CALL_BYTES = 1 << 20
"""Bytes one call may hold read ahead of its caller: an answer of a few thousand tokens."""
GATEWAY_BYTES = 64 << 20
"""Bytes all of a gateway's calls may hold read ahead of their callers."""

Batch = list[bytes]


class AheadBytes:
    """The bytes a gateway's calls hold read ahead of their callers, against a limit."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = GATEWAY_BYTES if limit is None else limit
        self.held = 0


class ReadAhead:
    """``source``'s batches, read on ahead of whoever awaits :meth:`next`, within the bounds.

    ``ended`` is called once ``source`` has ended or broken off (not when the read is
    stopped by :meth:`aclose`). Call :meth:`aclose` when done: the reading stops, its bytes
    are given back, ``source`` is closed."""

    def __init__(
        self, source: AsyncGenerator[Batch, None], bytes_: AheadBytes, ended: Callable[[], None]
    ) -> None:
        self._source = source
        self._bytes = bytes_
        self._ended = ended
        self._limit = CALL_BYTES
        self._ready: deque[tuple[Batch, int]] = deque()
        self._held = 0
        self._end: BaseException | None = None  # StopAsyncIteration, or what broke the read
        self._wanted: asyncio.Future[None] | None = None  # the consumer, waiting for a batch
        self._room: asyncio.Future[None] | None = None  # the reader, waiting for room
        self._task = asyncio.ensure_future(self._read())

    async def next(self) -> Batch:
        """The next batch; raises StopAsyncIteration at the end, or what broke the read."""
        while not self._ready:
            if self._end is not None:
                raise self._end
            self._wanted = asyncio.get_running_loop().create_future()
            try:
                await self._wanted
            finally:
                self._wanted = None
        batch, size = self._ready.popleft()
        self._held -= size
        self._bytes.held -= size
        _wake(self._room)
        return batch

    def _may_read(self) -> bool:
        """Room for one more read: the consumer waits for one, or both bounds have room."""
        if not self._ready:
            return True
        return self._held < self._limit and self._bytes.held < self._bytes.limit

    async def _read(self) -> None:
        try:
            while True:
                while not self._may_read():
                    self._room = asyncio.get_running_loop().create_future()
                    try:
                        await self._room
                    finally:
                        self._room = None
                batch = await anext(self._source)
                size = sum(map(len, batch))
                self._ready.append((batch, size))
                self._held += size
                self._bytes.held += size
                _wake(self._wanted)
        except asyncio.CancelledError:
            if self._end is None:
                self._end = asyncio.CancelledError()
            raise
        except Exception as exc:  # the answer's end, or what broke it: Ollama is done
            self._end = exc
            self._ended()
        finally:
            _wake(self._wanted)
            # Closed in the task that read it (its read timer is this task's), at once.
            await self._source.aclose()

    def stop(self) -> None:
        """Stop reading, at once; the bytes held are given back (the reader ends soon after)."""
        self._task.cancel()
        self._bytes.held -= self._held
        self._held = 0
        self._ready.clear()

    async def aclose(self) -> None:
        """:meth:`stop`, and wait for the reader to end and ``source`` to be closed."""
        self.stop()
        task = asyncio.current_task()
        before = 0 if task is None else task.cancelling()  # a closer being cancelled closes too
        try:
            await self._task
        except asyncio.CancelledError:
            if task is not None and task.cancelling() > before:  # this task's own, meanwhile
                raise
        await self._source.aclose()  # a reader cancelled before it began never did


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
