"""Whether Ollama has the whole request of the gateway's call under way in this task.

aiohttp's trace tells of each chunk of a request's body as it is written; the body's bytes
all written, Ollama has the call (it evaluates the prompt before any byte of an answer), and
a caller who hangs up from then on consumed its prompt, as one of ``ometer chat`` or the
Python API does (``Heard.delivered``, from httpcore's trace). The count is kept in one box
per attempt, made in the call's task: aiohttp writes the body in a task of its own, which
sees the same box.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import aiohttp


class _Left:
    __slots__ = ("bytes",)

    def __init__(self, size: int) -> None:
        self.bytes = size


_LEFT: ContextVar[_Left | None] = ContextVar("ometer_body_left", default=None)


def sending_body(body: object) -> None:
    """An attempt of this task's call is about to send ``body`` (a stream's size is unknown:
    never said to be delivered)."""
    _LEFT.set(_Left(len(body)) if isinstance(body, bytes) and body else None)


def delivered() -> bool:
    """Whether the body of this task's last attempt was written whole."""
    left = _LEFT.get()
    return left is not None and left.bytes <= 0


async def _chunk_sent(_: Any, __: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
    left = _LEFT.get()
    if left is not None:
        left.bytes -= len(params.chunk)


async def _answered(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
    left = _LEFT.get()
    if left is not None and params.response.status >= 400:  # refused: Ollama works on nothing
        left.bytes = 1


TRACE = aiohttp.TraceConfig()
TRACE.on_request_chunk_sent.append(_chunk_sent)
TRACE.on_request_end.append(_answered)
TRACE.freeze()
