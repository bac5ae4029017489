"""Keeping a gateway's rate limits those of the ledger (``ometer limit set``): read when it
starts, and every :data:`LIMITS_SECONDS` after."""

from __future__ import annotations

import asyncio
import logging

from ollama_meter.errors import LedgerError
from ollama_meter.gateway._queue import FairQueue
from ollama_meter.gateway._rates import LIMITS_SECONDS, RateLimits
from ollama_meter.gateway._threads import in_thread
from ollama_meter.ledger import Ledger

log = logging.getLogger("ollama_meter.gateway")


async def read_limits(ledger: Ledger, rates: RateLimits) -> bool:
    """Put the ledger's limits in force; False (the last ones kept) when they cannot be read.

    A row that cannot be read (edited by hand in SQL) keeps its scope's limits read before,
    said in a warning at each read; every other row is put in force all the same.
    """
    try:
        limits, broken = await in_thread(ledger.limits_in_force)
    except LedgerError as exc:
        log.warning("keeping the limits read before: %s", exc)
        return False
    if broken:  # one line a read, however many rows
        others = len(broken) - 1
        more = f" (and {others} other {'row' if others == 1 else 'rows'})" if others else ""
        log.warning("%s; keeping the limits read before for them%s", broken[0][1], more)
    rates.load(limits, keep=[scope for scope, _ in broken])
    return True


async def keep_limits(ledger: Ledger, rates: RateLimits, queue: FairQueue | None = None) -> None:
    """Put the ledger's limits in force now and every few seconds (a failed read keeps the last).

    After each read the waiting calls of ``queue`` get them too: the departments' new
    weights, and a concurrency limit raised or removed lets calls waiting for it go now,
    not when one of the scope's running calls ends.
    """
    while True:
        if await read_limits(ledger, rates) and queue is not None:
            queue.reweigh(rates.weight_of)
            queue.kick()
        await asyncio.sleep(LIMITS_SECONDS)
