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
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ollama_meter.gateway._threads import in_thread
from ollama_meter.ledger import Ledger, prune

log = logging.getLogger("ollama_meter.gateway")

DAY_SECONDS = 86_400.0
RETRY_SECONDS = 3_600.0


STEPPED = timedelta(minutes=5)
"""How far this host's clock may read ahead of the time elapsed before a prune says so."""


def _since_boot() -> float:
    """Seconds since this host booted, suspends included (Linux); elsewhere, monotonic."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


class SteadyClock:
    """This host's time (UTC) that a gateway's prune counts back from: the wall clock, but
    never past its reading at the gateway's start plus the time elapsed since, by a clock
    that the wall clock's steps do not move.

    A host clock that stepped ahead while the gateway ran (a VM resumed with its clock set by
    hand, NTP gone wrong) had the next daily prune on a SQLite ledger count back from it, and
    from the calls the gateway stamped by it meanwhile: every span of the days kept was
    removed, and a horizon set a year ahead for every process on the ledger
    (test_retention_clock.py). The earlier of the two only ever keeps more: a clock that was
    behind at the start and put right since keeps that much more until the gateway restarts.
    """

    def __init__(
        self,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        elapsed: Callable[[], float] = _since_boot,
    ) -> None:
        self._wall, self._elapsed = wall, elapsed
        self._start, self._at = wall(), elapsed()
        self.ahead = timedelta(0)
        """How far the wall clock read ahead at the last reading, past :data:`STEPPED`."""

    def __call__(self) -> datetime:
        wall = self._wall()
        steady = self._start + timedelta(seconds=self._elapsed() - self._at)
        self.ahead = wall - steady if wall - steady > STEPPED else timedelta(0)
        return min(wall, steady)


async def prune_daily(
    ledger: Ledger, keep_days: int, *, every: float = DAY_SECONDS, retry: float = RETRY_SECONDS
) -> None:
    """Prune now, then every ``every`` seconds, until cancelled (which stops a prune under
    way between its pieces); a prune that failed is tried again after ``retry`` seconds."""
    clock = SteadyClock()
    while True:
        stop = threading.Event()
        done = await in_thread(
            _prune_once, ledger, keep_days, stop, retry, clock, on_cancel=stop.set
        )
        await asyncio.sleep(every if done else min(every, retry))


def _prune_once(
    ledger: Ledger, keep_days: int, stop: threading.Event, retry: float, clock: SteadyClock
) -> bool:
    """One prune, its outcome logged here (a cancelled caller never sees the result); False
    when it failed."""
    try:
        result = prune(ledger, keep_days, clock=clock, stop=stop.is_set)  # the ledger's clock
    except Exception as exc:  # the gateway goes on, and tries again
        log.warning(
            "pruning raw spans older than %d days failed: %s; tried again in %s",
            keep_days, exc, _after(retry),
        )  # fmt: skip
        return False
    if result.cutoff is None:  # stopped while it read the ledger's pages, before a horizon
        log.warning(
            "the gateway is stopping: pruning stopped before it removed a span; it is left "
            "for the next prune (the next start with OMETER_KEEP_DAYS=%d, or ometer db prune "
            "--keep-days %d)",
            keep_days, keep_days,
        )  # fmt: skip
        return True
    before = f"{result.cutoff:%Y-%m-%d %H:%M} UTC"
    if clock.ahead and ledger.path is not None:  # (PostgreSQL: the server's clock counts)
        log.warning(
            "OMETER_KEEP_DAYS=%d: this host's clock reads %s ahead of the time elapsed since "
            "the gateway started: pruned by the time elapsed (spans before %s), not by the "
            "clock; put the clock right (timedatectl, NTP), or if it is right now (it was "
            "behind when the gateway started), restart the gateway",
            keep_days, clock.ahead, before,
        )  # fmt: skip
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
