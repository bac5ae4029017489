"""The fault engine: misbehaviour armed at run time, and what each fault does to an answer.

A fault is armed with :meth:`OllamaEmulator.inject` and consumed by the next
inference request it matches. Every route asks the same two questions of it:
what to answer instead of the reply (:func:`early`), and where a stream is cut
(:attr:`Armed.cut_after`); the route only dresses the answer in its own wire format.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from ollama_meter.testing._names import normalize_name
from ollama_meter.testing._wire import ERROR_500, ERROR_503, ERROR_MIDSTREAM


class Fault(StrEnum):
    """Ways the emulated Ollama can misbehave, armed with :meth:`OllamaEmulator.inject`."""

    HTTP_500 = "http_500"
    """Answer 500 with an Ollama ``{"error": ...}`` body before any output."""
    HTTP_503 = "http_503"
    """Answer 503 (server busy); arm with ``times=N`` for a flaky upstream."""
    MIDSTREAM_ERROR = "midstream_error"
    """Stream ``after_tokens`` chunks, then an ``{"error": ...}`` line, then end
    the body cleanly; a non-streamed request gets a 500 instead."""
    DROP = "drop"
    """Stream ``after_tokens`` chunks, then close the socket without finishing the
    body; a non-streamed request is closed with no response at all."""
    OMIT_COUNTS = "omit_counts"
    """Answer normally but leave ``prompt_eval_count`` and ``eval_count`` out."""
    HANG = "hang"
    """Accept the request and send nothing until the client leaves, :meth:`stop`
    is called, or :data:`HANG_LIMIT_S` passes."""
    ERROR_DONE = "error_done"
    """On ``/api/chat`` and ``/api/generate``: stream ``after_tokens`` chunks, then
    end with ``{"done": true, "done_reason": "error", "error": ...}``, as an
    Ollama-compatible proxy does when its backend dies; a non-streamed request
    gets that object with status 200. Elsewhere it acts as MIDSTREAM_ERROR."""
    NO_USAGE = "no_usage"
    """On ``/v1`` generation routes: leave the usage out of a whole answer, and
    send no usage chunk even when ``stream_options.include_usage`` asks for it."""
    INFLATE_COUNTS = "inflate_counts"
    """On generation routes: answer normally but report :data:`WILD_COUNT` prompt tokens
    (on ``/api/chat`` and ``/api/generate`` taking as many nanoseconds), as a server that
    lies (or overflows) would."""
    INFLATE_REPLY = "inflate_reply"
    """On generation routes: answer normally but report :data:`WILD_REPLY` reply tokens, as a
    server that lies (or a proxy that garbles its counts) would."""
    IGNORE_CAP = "ignore_cap"
    """On generation routes: reply in full whatever ``num_predict`` (or ``max_tokens``)
    says, and report what was sent, as an Ollama-compatible server that does not honour
    the cap would."""
    STALL = "stall"
    """Stream ``after_tokens`` chunks, then send nothing more until the client leaves,
    :meth:`stop` is called, or :data:`HANG_LIMIT_S` passes (then close the socket), as a
    server wedged mid-reply does; a non-streamed request hangs as :attr:`HANG`."""
    UNDERCOUNT = "undercount"
    """On generation routes: stream and answer in full, but report :data:`SMALL_COUNT` prompt
    and reply tokens whatever was evaluated and streamed, as a server (or a proxy before
    it) that under-reports would: Ollama streams a reply token a chunk, so the chunks say more."""
    NO_ROUTE = "no_route"
    """Answer ``404 page not found`` (text/plain), as an Ollama too old to have
    the route does."""


WILD_COUNT = 10**18
"""What :attr:`Fault.INFLATE_COUNTS` reports."""
WILD_REPLY = 2**31 - 1
"""What :attr:`Fault.INFLATE_REPLY` reports."""
SMALL_COUNT = 1
"""What :attr:`Fault.UNDERCOUNT` reports of each count."""

CUT_SHORT = frozenset({Fault.MIDSTREAM_ERROR, Fault.DROP, Fault.ERROR_DONE, Fault.STALL})
"""Faults that stream ``after_tokens`` chunks and then fail."""


@dataclass
class Armed:
    """A fault waiting for ``remaining`` more requests (to ``model`` only, when set)."""

    fault: Fault
    remaining: int
    model: str | None
    after_tokens: int

    @property
    def cut_after(self) -> int | None:
        """How many chunks a stream carries before this fault cuts it; None if it does not."""
        return self.after_tokens if self.fault in CUT_SHORT else None


class Instead(Enum):
    """An answer that is no answer: the route is missing, or the connection never replies."""

    NOT_FOUND = "404 page not found"
    HANG = "hang"
    DROP = "drop"


def early(
    fault: Fault | None, *, generating: bool, streaming: bool
) -> tuple[int, str] | Instead | None:
    """What to answer instead of the reply: (status, message), an :class:`Instead`, or None.

    ``generating``: chat or completion (an embedding has no stream to cut, so a
    mid-stream fault is a plain 500 there). A non-streamed generation with an
    error-done fault still gets its answer: the error-done object, status 200
    (the ``/v1`` routes have no such ending and ask as for a mid-stream error).
    """
    if fault is None:
        return None
    if fault is Fault.NO_ROUTE:
        return Instead.NOT_FOUND
    if fault is Fault.HTTP_503:
        return (503, ERROR_503)
    if fault is Fault.HTTP_500:
        return (500, ERROR_500)
    if fault in (Fault.MIDSTREAM_ERROR, Fault.ERROR_DONE):
        if not generating:
            return (500, ERROR_500)
        if not streaming and fault is Fault.MIDSTREAM_ERROR:
            return (500, ERROR_MIDSTREAM)
    if fault is Fault.HANG or (fault is Fault.STALL and not streaming):
        return Instead.HANG
    if fault is Fault.DROP and not streaming:
        return Instead.DROP
    return None


@dataclass
class Faults:
    """The armed faults, in the order they were injected; thread-safe."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    armed: list[Armed] = field(default_factory=list)

    def inject(self, fault: Fault, times: int, model: str | None, after_tokens: int) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        if after_tokens < 0:
            raise ValueError("after_tokens must not be negative")
        armed = Armed(Fault(fault), times, normalize_name(model) if model else None, after_tokens)
        with self.lock:
            self.armed.append(armed)

    def take(self, model_name: str) -> Armed | None:
        """The first fault armed for ``model_name`` (or any model), one firing used up."""
        key = normalize_name(model_name)
        with self.lock:
            for armed in self.armed:
                if armed.model is None or armed.model == key:
                    armed.remaining -= 1
                    if armed.remaining <= 0:
                        self.armed.remove(armed)
                    return armed
        return None

    @property
    def pending(self) -> int:
        with self.lock:
            return sum(a.remaining for a in self.armed)

    def clear(self) -> None:
        with self.lock:
            self.armed.clear()
