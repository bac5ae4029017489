"""Where the gateway does ledger work: a thread pool of its own, off the event loop.

Many calls may wait in one group commit at once, so the pool is wider than anyio's
default of 40; a plain executor also skips anyio's per-call overhead.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio

from ollama_meter._runtime import runtime


def _ledger_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=64, thread_name_prefix="ometer-ledger")


def _stop(pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=False, cancel_futures=True)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Ledger and budget work off the event loop, finished even if the request is cancelled."""
    loop = asyncio.get_running_loop()
    pool = runtime().shared("threads", "gateway-ledger", _ledger_threads, _stop)
    with anyio.CancelScope(shield=True):
        return await loop.run_in_executor(pool, functools.partial(fn, *args))
