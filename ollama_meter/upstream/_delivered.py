"""Whether Ollama has the whole request of the gateway's call under way in this task.

A request's body goes to aiohttp as a payload that notes when its last byte has been handed
to the connection; Ollama has the call then (it evaluates the prompt before any byte of an
answer), and a caller who hangs up from then on consumed its prompt, as one of ``ometer chat``
or the Python API does (``Heard.delivered``, from httpcore's trace). An answer of 400 or more
says Ollama works on nothing. The note is one box per attempt, made in the call's task:
aiohttp writes the body in a task of its own, which writes to the same box.

An aiohttp ``TraceConfig`` counting the body's chunks said the same, but with one, aiohttp
makes a trace and the parameters of each of its signals for every step of every request,
about 2.5% of a metered call's work on the event loop.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import BytesPayload


class _Sent:
    __slots__ = ("refused", "whole")

    def __init__(self) -> None:
        self.whole = False
        self.refused = False


_SENT: ContextVar[_Sent | None] = ContextVar("ometer_body_sent", default=None)


class _Body(BytesPayload):
    """A request body that notes in ``sent`` when it has been handed over whole."""

    def __init__(self, value: bytes, sent: _Sent) -> None:
        super().__init__(value)  # its type aiohttp's own for bytes: the request's header wins
        self._sent = sent

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await super().write_with_length(writer, content_length)
        if content_length is None or content_length >= len(self._value):
            self._sent.whole = True


def sending_body(body: Any) -> Any:
    """An attempt of this task's call is about to send ``body``: what to hand aiohttp as its
    data (a stream's size is unknown: never said to be delivered)."""
    if isinstance(body, bytes) and body:
        sent = _Sent()
        _SENT.set(sent)
        return _Body(body, sent)
    _SENT.set(None)
    return body


def answered(status: int) -> None:
    """The answer to this task's last attempt came with ``status``."""
    sent = _SENT.get()
    if sent is not None and status >= 400:  # refused: Ollama works on nothing
        sent.refused = True


def delivered() -> bool:
    """Whether the body of this task's last attempt was written whole, and not refused."""
    sent = _SENT.get()
    return sent is not None and sent.whole and not sent.refused
