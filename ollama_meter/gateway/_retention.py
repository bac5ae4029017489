"""``OMETER_KEEP_DAYS``: the gateway prunes raw spans past the horizon once a day.

Several gateways on one ledger may all do it: pruning is idempotent, and each
delete is a short transaction. A failure (a ``db rollup`` under way, a locked or
absent ledger) is logged and tried again within the hour; it never stops the gateway. A gateway told to stop stops its prune between two
pieces (systemd's stop timeout is 90 s; a prune of millions of spans takes longer),
says what it left, and the next prune goes on from there.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ollama_meter.gateway._threads import in_thread
from ollama_meter.ledger import Ledger, prune

log = logging.getLogger("ollama_meter.gateway")

DAY_SECONDS = 86_400.0
RETRY_SECONDS = 3_600.0


async def prune_daily(
    ledger: Ledger, keep_days: int, *, every: float = DAY_SECONDS, retry: float = RETRY_SECONDS
) -> None:
    """Prune now, then every ``every`` seconds, until cancelled (which stops a prune under
    way between its pieces); a prune that failed is tried again after ``retry`` seconds."""
    while True:
        stop = threading.Event()
        done = await in_thread(_prune_once, ledger, keep_days, stop, retry, on_cancel=stop.set)
        await asyncio.sleep(every if done else min(every, retry))


def _prune_once(ledger: Ledger, keep_days: int, stop: threading.Event, retry: float) -> bool:
    """One prune, its outcome logged here (a cancelled caller never sees the result); False
    when it failed."""
    try:
        result = prune(ledger, keep_days, stop=stop.is_set)  # by the ledger's clock
    except Exception as exc:  # the gateway goes on, and tries again
        log.warning(
            "pruning raw spans older than %d days failed: %s; tried again in %s",
            keep_days, exc, _after(retry),
        )  # fmt: skip
        return False
    before = f"{result.cutoff:%Y-%m-%d %H:%M} UTC"
    if note := result.clock_note(keep_days):
        log.warning("OMETER_KEEP_DAYS=%d: %s", keep_days, note)
    if result.stopped:
        log.warning(
            "the gateway is stopping: pruning stopped after removing %s span(s) started before "
            "%s; the rest, and giving their space back to the disk, are left for the next "
            "prune (the next start with OMETER_KEEP_DAYS=%d, or ometer db prune --keep-days %d)",
            f"{result.removed:,}",
            before,
            keep_days,
            keep_days,
        )
    elif result.removed:
        log.info(
            "pruned %d span(s) started before %s (OMETER_KEEP_DAYS=%d)",
            result.removed,
            before,
            keep_days,
        )
    return True


def _after(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"
