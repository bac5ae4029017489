"""Where the gateway does ledger work: a thread pool of its own, off the event loop.

Many calls may wait in one group commit at once, so the pool is wider than anyio's
default of 40; a plain executor also skips anyio's per-call overhead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio

from ollama_meter._runtime import runtime
from ollama_meter.meter._ending import stopped
from ollama_meter.upstream._delivered import delivered

if TYPE_CHECKING:
    from ollama_meter.meter import Meter, MeteredCall

log = logging.getLogger("ollama_meter.gateway")


def _ledger_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=64, thread_name_prefix="ometer-ledger")


def _stop(pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=False, cancel_futures=True)


async def in_thread(
    fn: Callable[..., Any], *args: Any, on_cancel: Callable[[], object] | None = None
) -> Any:
    """Ledger and budget work off the event loop, finished even if the request is cancelled.

    However it is cancelled (an anyio scope, or ``Task.cancel`` as a caller's hang-up
    does), the work is neither dropped from the pool's queue nor left running on its
    own: the cancellation is raised once it is done, so a span is written first.
    ``on_cancel`` is called at the first cancellation: long work (a prune) told to stop
    between its pieces, so the wait is short.
    """
    loop = asyncio.get_running_loop()
    pool = runtime().shared("threads", "gateway-ledger", _ledger_threads, _stop)
    work = loop.run_in_executor(pool, functools.partial(fn, *args))
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):  # anyio's own cancellation waits outside
        while not work.done():
            try:
                await asyncio.wait((work,))  # cancelling the wait leaves the work alone
            except asyncio.CancelledError as exc:
                if cancelled is None and on_cancel is not None:
                    on_cancel()
                cancelled = exc
    if cancelled is not None:
        if not work.cancelled() and (failed := work.exception()) is not None:
            log.warning("%r failed while its caller was cancelled: %s", fn, failed)
        raise cancelled
    return work.result()


async def close_call(meter: Meter, call: MeteredCall, outcome: BaseException | None) -> None:
    """Close ``call`` on the event loop when its span can wait for its commit (whole in the
    journal, a few dozen microseconds), else in a thread: the commit may wait. A call its
    caller left once Ollama had its whole request consumed its prompt (``stopped``)."""
    if outcome is not None:
        if call.heard is not None:  # what a gateway behind this one has: ``meter._elsewhere``
            call.heard.delivered = delivered()
        stopped(call, outcome, delivered())
    if not meter.close_now(call, outcome):
        await in_thread(meter.close, call, outcome)
