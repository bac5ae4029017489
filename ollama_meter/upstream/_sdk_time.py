"""How long the ``ollama`` client waits for Ollama: a hard budget's time left, and each item.

A request hook cuts each read's timeout to the time a hard budget leaves the call
(:func:`within`); a response hook (:func:`paced`) holds each answer to the same rule as
the gateway's: an item (an NDJSON line, a whole answer) that does not arrive whole within
the read timeout is Ollama's silence, however many bytes it drips meanwhile (httpx's read
timeout waits for each read, so a byte a second never ran it out).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Protocol

import httpx

from ollama_meter.errors import UpstreamError
from ollama_meter.upstream._resilience import Waits


class TimeCap(Waits, Protocol):
    """How long a call may still wait for Ollama (a hard budget's time; see MeteredCall), told
    of its waits between attempts, which are not Ollama's time."""

    def time_left_s(self) -> float | None: ...

    def out_of_time(self) -> UpstreamError: ...


_WAIT_AT_MOST: ContextVar[float | None] = ContextVar("ometer_wait_at_most", default=None)
"""The longest the request sent in this context may wait for each piece of its answer."""


def waits(request: httpx.Request) -> None:
    """A request hook: the read timeout cut to :data:`_WAIT_AT_MOST`. A whole answer comes
    at its end, so for it that is the time the call may still run."""
    most = _WAIT_AT_MOST.get()
    if most is not None:
        timeout = dict(request.extensions.get("timeout") or {})
        read = timeout.get("read")
        timeout["read"] = most if read is None else min(read, most)
        request.extensions["timeout"] = timeout


def within(cap: TimeCap | None) -> contextlib.AbstractContextManager[None]:
    """Requests sent inside wait at most as long as ``cap`` has left; a read timeout that
    comes once it has none left is the call cut (``cap.out_of_time()``), not Ollama's."""
    left = None if cap is None else cap.time_left_s()
    if cap is None or left is None:
        return _NO_LIMIT
    if left <= 0:  # a read timeout of 0 is no wait but a non-blocking read: it "cannot reach"
        raise cap.out_of_time()
    return _limited(cap, left)


_NO_LIMIT: contextlib.nullcontext[None] = contextlib.nullcontext()


@contextlib.contextmanager
def _limited(cap: TimeCap, left: float) -> Iterator[None]:
    token = _WAIT_AT_MOST.set(left)
    try:
        yield
    except httpx.ReadTimeout as exc:
        if cap.time_left_s() != 0:
            raise
        raise cap.out_of_time() from exc
    finally:
        _WAIT_AT_MOST.reset(token)


class _Items:
    """Whether the bytes read so far end an item (a line that is not blank) in time."""

    def __init__(self, most: float) -> None:
        self.most = most
        self.since = time.monotonic()
        self.pending = False
        """Bytes of an item not yet ended are waiting (a blank line ends none)."""

    def read(self, data: bytes) -> None:
        *ended, rest = data.split(b"\n")
        if any(line.strip() for line in ended) or (ended and self.pending):
            self.since = time.monotonic()
        self.pending = bool(rest.strip()) or (self.pending and not ended)
        if time.monotonic() - self.since > self.most:
            raise httpx.ReadTimeout(f"no whole item of the answer in {self.most:g} s")


class _Paced(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, most: float) -> None:
        self._stream, self._items = stream, _Items(most)

    def __iter__(self) -> Iterator[bytes]:
        for data in self._stream:
            self._items.read(data)
            yield data

    def close(self) -> None:
        self._stream.close()


class _APaced(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, most: float) -> None:
        self._stream, self._items = stream, _Items(most)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self._stream:
            self._items.read(data)
            yield data

    async def aclose(self) -> None:
        await self._stream.aclose()


def paced(response: httpx.Response) -> None:
    """A response hook: ``response``'s body is read item by item within its read timeout."""
    most = (response.request.extensions.get("timeout") or {}).get("read")
    if most is None:
        return
    if isinstance(response.stream, httpx.SyncByteStream):
        response.stream = _Paced(response.stream, most)
    elif isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = _APaced(response.stream, most)
