"""How a call ends: its outcome on its span, and the calls the interpreter's exit ends.

Owns the words a span's status is said in (ok, Ollama's failure as classified, an abort,
a failure of ours) and the calls still open as the interpreter exits; never the measuring,
pricing or writing, which are the meter's.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import TYPE_CHECKING

from ollama_meter.errors import KeyRefused, UpstreamError
from ollama_meter.meter._call import CALLER_STOPPED, MeteredCall
from ollama_meter.records import NO_HOST, SpanRecord, Status

if TYPE_CHECKING:
    from ollama_meter.meter._meter import Meter

log = logging.getLogger("ollama_meter.meter")


def mark_ended(span: SpanRecord, error: BaseException | None) -> None:
    """Say on the span how its call ended: ok, Ollama's failure as classified, an abort
    (its caller stopped it: :data:`CALLER_STOPPED`), or a failure of ours, by its type."""
    if error is None:
        span.status = Status.OK
        span.http_status = 200
    elif isinstance(error, UpstreamError):
        span.fail(error.error_type, str(error), http_status=error.status_code)
        if not error.reached_upstream:  # never left this process: no server's call
            span.upstream_host = NO_HOST
    elif isinstance(error, KeyRefused):  # refused as it left the queue: not sent on from there
        # Its first wait named no server yet; after a move, the one that failed it stays named.
        span.fail(error.error_type, str(error), http_status=error.http_status)
    elif isinstance(error, CALLER_STOPPED):
        span.fail("client_abort", status=Status.CLIENT_ABORT)
    else:
        span.fail(type(error).__name__, str(error))


def stopped(call: MeteredCall, error: BaseException, delivered: bool | None = None) -> None:
    """The call ends with ``error``: when its caller stopped it (Ctrl-C, a cancel) once
    Ollama had the whole request (``Heard.delivered``), Ollama was evaluating its prompt,
    which comes before any token of an answer, so the prompt is charged (estimated) with the
    time the call ran, as a stream stopped after its first chunk, or a call a dead process
    left, is charged: never a silent $0, nor counts said to be ``reported``."""
    if delivered is None:  # the ollama client's, else the gateway's (``_delivered.py``)
        delivered = call.heard is not None and call.heard.delivered
    if isinstance(error, CALLER_STOPPED) and delivered:
        call.answered()  # it consumed, as a 200 lost on the way did


_OPEN: dict[int, tuple[Meter, MeteredCall]] = {}
"""The open calls of the ``ollama`` client's driver (:class:`Run`), with their meter, by id.
Held until closed: an async stream collected once its event loop was closed never runs
its closing (no loop is left to), and was gone from a weak registry with it."""
_AT_EXIT: list[int] = []
"""The processes that have :func:`_close_left_open` run as they exit (a fork copies the list)."""


def close_at_exit(meter: Meter, call: MeteredCall) -> None:
    """Have ``call`` closed as the interpreter exits, if nothing closed it by then: a stream
    left open (kept in a list, read by a daemon thread, on an event loop never shut down).
    Left to be collected, its span was written as the interpreter came apart, or not at all:
    what the ledger needs was gone ("sys.meta_path is None" on stderr), or its generator never
    ran again, and the call was in the journal only, for a later process to charge as
    ``interrupted`` (its prompt, estimated, none of the answer read).

    Registered with :mod:`atexit` at a process's first call, after the parts the span goes to
    (telemetry) registered theirs: handlers run newest first, so those are still open. A
    child of :mod:`multiprocessing` runs no atexit handler (it leaves by ``os._exit``) but
    that module's finalizers, so it is one of those too."""
    _OPEN[id(call)] = (meter, call)
    if os.getpid() not in _AT_EXIT:
        _AT_EXIT.append(os.getpid())
        atexit.register(_close_left_open)
        from multiprocessing.util import Finalize

        Finalize(None, _close_left_open, exitpriority=0)


def closed(call: MeteredCall) -> None:
    """``call`` is closed: nothing is left for the exit to do for it."""
    _OPEN.pop(id(call), None)


def _close_left_open() -> None:
    """End each call still open as its caller's abort, with what it had read by now."""
    for meter, call in list(_OPEN.values()):
        try:
            meter.close(call, SystemExit())  # closed already, or a forked parent's: nothing
        except BaseException as exc:  # the others must still be recorded
            log.warning("a call left open at exit could not be recorded: %s", exc)
