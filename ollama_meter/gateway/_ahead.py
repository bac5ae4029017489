"""A streamed answer read on ahead of a caller slow to take it, so its slot goes back with Ollama's end.

A call's slot stands for Ollama's work on it. A stream was read from Ollama only as fast as
its caller took it, so a caller reading slowly (a slow link, or on purpose, never still long
enough to be hung up on: ``_server.STALLED_S``) kept its slot, and every other department's
calls waited behind its reading, long after Ollama had finished. Here the answer is read on
in a task of its own, into memory the consumer empties, and past a call's memory into a file
of its own (:class:`_Spill`, unlinked, in ``TMPDIR``), as nginx buffers a proxied answer; when
Ollama's answer has ended (or broken off) the slot is given back (``ended``), and the rest
waits for the caller.

**Bounds.** A call holds at most :data:`CALL_BYTES` in memory and :data:`CALL_SPILL_BYTES`
in its file; all calls of a gateway at most :data:`GATEWAY_BYTES` and :data:`SPILL_BYTES`
(:class:`Pools`), each one read past them at most (what the consumer held anyway). Past
them the answer is read only as the caller takes it, as before: Ollama waits on the caller,
whose call keeps its slot (a caller that takes nothing is still hung up on).

**Fair.** Each pool is shared by the fair queue's flows (a tenant's department) as its slots
are: a flow may hold no more than its weight's part of the pool with a part left over for one
more flow (alone, half), so one department's slow readers, however many, never leave another
without room (they filled the one pool before, and every other caller kept its slot while it
read). Items are never reordered, and what broke the read reaches the caller after the items
read before it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, Callable, Hashable
from dataclasses import dataclass

from ollama_meter._logging import Throttled

CALL_BYTES = 1 << 20
"""Bytes one call may hold in memory ahead of its caller: an answer of a few thousand tokens."""
GATEWAY_BYTES = 64 << 20
"""Bytes all of a gateway's calls may hold in memory ahead of their callers."""
CALL_SPILL_BYTES = 64 << 20
"""Bytes one call may hold in its file past its memory: half a million tokens streamed."""
SPILL_BYTES = 1 << 30
"""Bytes all of a gateway's calls may hold in files."""

Batch = list[bytes]
_unspilled = Throttled(logging.getLogger("ollama_meter.gateway"))
"""A line every 10 s at most when files cannot be written (a full disk: every slow reader)."""


class _Share:
    """One flow's part of a pool: its readers, its weight, the bytes it holds."""

    __slots__ = ("held", "readers", "weight")

    def __init__(self, weight: int) -> None:
        self.weight = max(1, weight)
        self.readers = 0
        self.held = 0


class AheadBytes:
    """Bytes a gateway's calls hold ahead of their callers (in memory, or in files), against a
    limit, shared by flows."""

    __slots__ = ("_shares", "_weights", "held", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = GATEWAY_BYTES if limit is None else limit
        self.held = 0
        self._shares: dict[Hashable, _Share] = {}
        self._weights = 0  # of the flows reading

    def join(self, flow: Hashable, weight: int = 1) -> _Share:
        """``flow``'s part, one more of its calls reading ahead (its weight, its first's)."""
        share = self._shares.get(flow)
        if share is None:
            share = self._shares[flow] = _Share(weight)
            self._weights += share.weight
        share.readers += 1
        return share

    def leave(self, flow: Hashable, share: _Share) -> None:
        """One of ``flow``'s calls reads ahead no more (its bytes given back)."""
        share.readers -= 1
        if share.readers == 0 and self._shares.get(flow) is share:
            del self._shares[flow]
            self._weights -= share.weight

    def room(self, share: _Share) -> bool:
        """Room for one more read of ``share``'s flow: the pool has room, and the flow holds
        less than its weight's part of it, with a part of weight 1 left for a flow to come."""
        return (
            self.held < self.limit and share.held * (self._weights + 1) < self.limit * share.weight
        )

    def take(self, share: _Share, size: int) -> None:
        share.held += size
        self.held += size

    def give(self, share: _Share, size: int) -> None:
        share.held -= size
        self.held -= size

    def flows(self) -> dict[Hashable, int]:
        """The bytes each flow reading holds."""
        return {flow: share.held for flow, share in self._shares.items()}


class Pools:
    """A gateway's read-ahead: bytes held in memory and in files."""

    __slots__ = ("disk", "memory")

    def __init__(self, memory: int | None = None, disk: int | None = None) -> None:
        self.memory = AheadBytes(GATEWAY_BYTES if memory is None else memory)
        self.disk = AheadBytes(SPILL_BYTES if disk is None else disk)

    def room(self, flow: Hashable = (), weight: int = 1) -> Room:
        """Where a call of ``flow`` (its fair queue's) of ``weight`` may read ahead."""
        return Room(self, flow, weight)


@dataclass(frozen=True, slots=True)
class Room:
    """Where one call reads ahead: ``pools``, as ``flow``'s, of ``weight``."""

    pools: Pools
    flow: Hashable = ()
    weight: int = 1


class _Spilled:
    """Batches of the call's file, read before what follows in its queue."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class _Spill:
    """A call's answer read past its memory: batches as records (frame count, lengths, frames)
    in an unlinked file, written at its end and read from its front, emptied once all are read.
    Its reads and writes are a batch each, of what was just written (the page cache's): done
    in place, on the event loop."""

    __slots__ = ("_fd", "_file", "read", "written")

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="ometer-ahead-")  # noqa: SIM115 (close())
        self._fd = self._file.fileno()
        self.written = self.read = 0

    def put(self, batch: Batch) -> None:
        record = struct.pack(f"<I{len(batch)}I", len(batch), *map(len, batch)) + b"".join(batch)
        view, at = memoryview(record), self.written
        try:
            while view:
                done = os.pwrite(self._fd, view, at)
                at, view = at + done, view[done:]
        except OSError:
            os.ftruncate(self._fd, self.written)  # no record half written
            raise
        self.written = at

    def get(self) -> Batch:
        (count,) = struct.unpack("<I", self._pread(4))
        sizes = struct.unpack(f"<{count}I", self._pread(4 * count))
        body = self._pread(sum(sizes))
        batch, at = [], 0
        for size in sizes:
            batch.append(body[at : at + size])
            at += size
        return batch

    def _pread(self, size: int) -> bytes:
        data = os.pread(self._fd, size, self.read)
        if len(data) != size:
            raise OSError(f"the gateway's read-ahead file lost {size - len(data)} bytes")
        self.read += size
        return data

    def empty(self) -> None:
        os.ftruncate(self._fd, 0)
        self.written = self.read = 0

    def close(self) -> None:
        self._file.close()


class ReadAhead:
    """``source``'s batches, read on ahead of whoever awaits :meth:`next`, within ``room``'s
    bounds (none: a gateway's own, one flow's).

    ``ended`` is called once ``source`` has ended or broken off (not when the read is
    stopped by :meth:`aclose`). Call :meth:`aclose` when done: the reading stops, its bytes
    are given back, ``source`` is closed."""

    def __init__(
        self,
        source: AsyncGenerator[Batch, None],
        room: Room | None,
        ended: Callable[[], None],
    ) -> None:
        room = Pools().room() if room is None else room
        self._source = source
        self._pools, self._flow = room.pools, room.flow
        self._memory = room.pools.memory.join(room.flow, room.weight)
        self._disk = room.pools.disk.join(room.flow, room.weight)
        self._ended = ended
        self._limit = CALL_BYTES
        self._spill_limit = CALL_SPILL_BYTES
        self._ready: deque[tuple[Batch, int] | _Spilled] = deque()
        self._held = 0  # in memory
        self._spill: _Spill | None = None
        self._spillable = True  # till a file cannot be made or written
        self._stopped = False
        self._end: BaseException | None = None  # StopAsyncIteration, or what broke the read
        self._wanted: asyncio.Future[None] | None = None  # the consumer, waiting for a batch
        self._room: asyncio.Future[None] | None = None  # the reader, waiting for room
        self._task = asyncio.ensure_future(self._read())

    async def next(self) -> Batch:
        """The next batch; raises StopAsyncIteration at the end, or what broke the read."""
        while not self._ready:
            if isinstance(self._end, StopAsyncIteration):
                raise StopAsyncIteration  # a new one: raised, this one would hold our frame
            if self._end is not None:
                raise self._end
            self._wanted = asyncio.get_running_loop().create_future()
            try:
                await self._wanted
            finally:
                self._wanted = None
        entry = self._ready[0]
        if isinstance(entry, _Spilled):
            assert self._spill is not None
            batch = self._spill.get()
            entry.count -= 1
            if entry.count == 0:
                self._ready.popleft()
            if self._spill.read == self._spill.written:  # all read: its room given back
                self._pools.disk.give(self._disk, self._spill.written)
                self._spill.empty()
        else:
            self._ready.popleft()
            batch, size = entry
            self._held -= size
            self._pools.memory.give(self._memory, size)
        _wake(self._room)
        return batch

    def _in_memory(self) -> bool:
        """Whether the next read is held in memory: the consumer waits for one, or memory has
        room and nothing waits in the file ahead of it."""
        if not self._ready:
            return True
        spilled = self._spill is not None and self._spill.written > 0
        return not spilled and self._held < self._limit and self._pools.memory.room(self._memory)

    def _in_file(self) -> bool:
        """Whether the next read may be held in the call's file."""
        written = 0 if self._spill is None else self._spill.written
        return self._spillable and written < self._spill_limit and self._pools.disk.room(self._disk)

    def _keep(self, batch: Batch, in_memory: bool) -> None:
        """``batch`` held where room was found for it (memory, ``in_memory``), or in memory if
        there is room there now: past the bounds it is the one read past them."""
        size = sum(map(len, batch))
        if not (in_memory or self._in_memory()) and self._spilled(batch):
            return
        self._ready.append((batch, size))
        self._held += size
        self._pools.memory.take(self._memory, size)

    def _spilled(self, batch: Batch) -> bool:
        """``batch`` written to the call's file; False if it could not be (kept in memory)."""
        try:
            if self._spill is None:
                self._spill = _Spill()
            before = self._spill.written
            self._spill.put(batch)
        except OSError as exc:  # a full disk, or none to write: reads as the caller takes them
            self._spillable = False
            more = _unspilled.more(type(exc).__name__)
            if more is not None:
                _unspilled.log.warning(
                    "a streamed answer is read ahead of its slow caller in memory only, its "
                    "file not written: %s%s",
                    exc,
                    more,
                )
            return False
        self._pools.disk.take(self._disk, self._spill.written - before)
        last = self._ready[-1] if self._ready else None
        if not isinstance(last, _Spilled):
            last = _Spilled()
            self._ready.append(last)
        last.count += 1
        return True

    async def _read(self) -> None:
        try:
            while True:
                while not ((in_memory := self._in_memory()) or self._in_file()):
                    self._room = asyncio.get_running_loop().create_future()
                    try:
                        await self._room
                    finally:
                        self._room = None
                self._keep(await anext(self._source), in_memory)
                _wake(self._wanted)
        except asyncio.CancelledError:
            if self._end is None:
                self._end = asyncio.CancelledError()
            raise
        except StopAsyncIteration:  # the answer's end: noted with no traceback, whose frames
            # hold this reader (a reference cycle each stream, for the cyclic collector)
            self._end = StopAsyncIteration()
            self._ended()
        except Exception as exc:  # what broke it: Ollama is done
            self._end = exc
            self._ended()
        finally:
            _wake(self._wanted)
            # Closed in the task that read it (its read timer is this task's), at once.
            await self._source.aclose()

    def stop(self) -> None:
        """Stop reading, at once; the bytes held are given back (the reader ends soon after)."""
        self._task.cancel()
        if self._stopped:
            return
        self._stopped = True
        memory, disk = self._pools.memory, self._pools.disk
        memory.give(self._memory, self._held)
        self._held = 0
        self._ready.clear()
        if self._spill is not None:
            disk.give(self._disk, self._spill.written)
            self._spill.close()
            self._spill = None
        memory.leave(self._flow, self._memory)
        disk.leave(self._flow, self._disk)

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
