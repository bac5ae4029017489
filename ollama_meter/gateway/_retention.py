"""``OMETER_KEEP_DAYS``: the gateway prunes raw spans past the horizon once a day.

Several gateways on one ledger may all do it: pruning is idempotent, and each
delete is a short transaction. A failure is logged and tried again the next day;
it never stops the gateway.
"""

from __future__ import annotations

import asyncio
import logging

from ollama_meter.gateway._threads import in_thread
from ollama_meter.ledger import Ledger, prune
from ollama_meter.meter import utc_now

log = logging.getLogger("ollama_meter.gateway")

DAY_SECONDS = 86_400.0


async def prune_daily(ledger: Ledger, keep_days: int, *, every: float = DAY_SECONDS) -> None:
    """Prune now, then every ``every`` seconds, until cancelled."""
    while True:
        try:
            result = await in_thread(lambda: prune(ledger, keep_days, now=utc_now()))
        except Exception as exc:  # the gateway goes on; tomorrow is another try
            log.warning("pruning raw spans older than %d days failed: %s", keep_days, exc)
        else:
            if result.removed:
                log.info(
                    "pruned %d span(s) started before %s UTC (OMETER_KEEP_DAYS=%d)",
                    result.removed,
                    f"{result.cutoff:%Y-%m-%d %H:%M}",
                    keep_days,
                )
        await asyncio.sleep(every)
