"""``/healthz``'s checks: each answered within :data:`HEALTH_WAIT`, one run at a time.

The route is open to anyone, for load balancers, and each check is work: a read of the
ledger in one of the threads the calls' spans are written in, a request to Ollama. A
probe that comes while a check runs waits for that one rather than starting another, and
a check that has not answered by the wait is reported as slow (it goes on, alone, and
the next probe after it ends starts afresh).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ollama_meter.gateway._threads import in_thread

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger

HEALTH_WAIT = 2.0
"""Seconds a probe waits for a check. Load balancers give up on a probe after 1 to 5 s
(Kubernetes after 1 s, then tries again); the ledger's own wait (OMETER_LEDGER_WAIT, 5 s)
and Ollama's (3 s) were both past most of them."""

LEDGER = (
    "failed: no answer within {wait} s (another process holds the ledger, or its server is slow)"
)
UPSTREAM = "unreachable: no answer within {wait} s"
"""What each check that has not answered says, ``{wait}`` the seconds it had."""


async def ledger_health(ledger: Ledger) -> str:
    """``ok``, or what is wrong: a read of one row (a probe every few seconds costs the same at
    any size), and the writes' own word (a damaged page that row misses)."""
    await in_thread(ledger.zone)
    return "ok" if ledger.failing is None else f"failed: {ledger.failing}"


class SharedCheck:
    """A check whose run is shared by the probes that come while it runs."""

    def __init__(self, check: Callable[[], Awaitable[str]], slow: str) -> None:
        self.check = check
        self.slow = slow
        """What a check that has not answered says, ``{wait}`` the seconds it had."""
        self.running: asyncio.Future[str] | None = None

    async def __call__(self, wait: float = HEALTH_WAIT) -> str:
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(self._checked())
        try:
            return await asyncio.wait_for(asyncio.shield(self.running), wait)
        except TimeoutError:
            return self.slow.format(wait=f"{wait:g}")

    async def _checked(self) -> str:
        try:
            return await self.check()
        except Exception as exc:  # said by the probes, not left unretrieved in a task
            return f"failed: {exc}"
