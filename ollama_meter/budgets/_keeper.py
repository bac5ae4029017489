"""The thread that looks after a process's budget leases between admissions.

Part of :class:`~ollama_meter.budgets._gate.BudgetGate` (which provides the attributes below
and decides everything else): a call running longer than a lease's row lives keeps its hold,
and a process gone quiet gives back what it no longer uses (also where a give-back could not
drop its rows: the next transaction that can does).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ollama_meter._logging import Throttled
from ollama_meter.budgets._leases import Lease, Slot

if TYPE_CHECKING:
    from ollama_meter.budgets._refusals import Refusals
    from ollama_meter.budgets._store import BudgetStore, BudgetWrites

log = logging.getLogger("ollama_meter.budgets")

KEEPING: weakref.WeakSet[Any] = weakref.WeakSet()
"""Gates whose keeper thread runs: ``close_gates`` ends them."""


def close_gates(*, give_back: bool = True) -> None:
    """Close every gate of this process that keeps leases (a host shutting down; each test's
    end: else they renew on, against a dropped database); ``give_back=False``: rows expire."""
    for gate in list(KEEPING):
        gate.close(give_back=give_back)


class LeaseKeeper:
    """The gate's lease keeper; the gate provides the attributes below."""

    ledger: BudgetStore
    _lock: threading.Lock
    _leases: dict[Slot, Lease]
    _keeper: threading.Thread | None
    _closing: threading.Event
    _closed: bool
    _abandoned: bool
    _clock: Callable[[], float]
    _idle_release: float
    _seen: tuple[datetime, float]
    _failures: Throttled
    _reservation_ttl: timedelta
    _release_idle: Callable[[datetime], None]
    _returning: set[str]
    """Rows of leases taken out, being given back."""
    _stranded: set[str]
    """Rows a give-back could not drop: the next transaction that can drops them."""
    _refused: Refusals
    _write_lease: Callable[[BudgetWrites, Lease, int, datetime], None]

    def _keep(self, now: datetime) -> None:
        """Note the time, and have a thread look after this process's leases (lock held).

        Leases are otherwise looked at only when a call is admitted: a call running longer
        than a lease's row lives (a long reply on a slow server) would lose its hold, and
        other processes could spend it; a process gone quiet would keep an idle lease.
        """
        self._seen = (now, self._clock())
        if self._keeper is None:
            self._keeper = threading.Thread(
                target=self._keep_leases, name="ometer-budget-leases", daemon=True
            )
            self._keeper.start()
            KEEPING.add(self)

    def _keep_leases(self) -> None:
        every = min(self._idle_release, self._reservation_ttl.total_seconds() / 4)
        while True:
            self._closing.wait(every)
            with self._lock:
                closed = self._abandoned or (
                    self._closed and not any(le.in_flight for le in self._leases.values())
                )
                # A ledger its owner disposed of (shutdown) is not reopened to renew: the
                # rows expire as a crash's would.
                if closed or not (self._leases or self._stranded) or self.ledger.disposed:
                    self._keeper = None  # the next admission starts another
                    KEEPING.discard(self)
                    return
                self._closing.clear()  # calls still in flight: its next round in ``every``
                seen, at = self._seen
                self._maintain(seen + timedelta(seconds=self._clock() - at))

    def _maintain(self, now: datetime) -> None:
        """Renew the rows of leases that hold money (calls in flight, or spans not yet in the
        ledger) before they expire, less the costs of kept spans now in the ledger; then give
        back idle leases (lock held). A failure is logged: the rows then expire as a crash's
        would."""
        clock, ttl = self._clock(), self._reservation_ttl
        holding = [le for le in self._leases.values() if le.in_flight or le.kept]
        try:
            if any(le.kept or le.due(now, clock, ttl) for le in holding):
                self._rewrite(holding, now)
        except Exception as exc:  # said once per kind every 10 s: the next round tries again
            self._failures.failed("renewing %d budget lease(s) that hold money", exc, len(holding))
        self._release_idle(now)
        if self._stranded:  # rows a give-back could not drop
            self._give_back([])

    def _rewrite(self, leases: list[Lease], now: datetime) -> None:
        """Write the rows of ``leases`` that are due, or whose kept spans are in the ledger now.

        A kept span's cost leaves the row and the lease together, in the transaction that found
        the span: from then on the spend counts it, so the room it leaves other processes is
        theirs, and this one's free room does not change."""
        clock, ttl = self._clock(), self._reservation_ttl
        written: list[tuple[Lease, int]] = []
        with self.ledger.budget_transaction() as store:
            # Only kept spans' costs move here: a call in flight is the next renewal's to count.
            kept = [i for lease in leases for i in lease.kept]
            found = store.recorded(kept) if kept else set()
            ones = [le.row_id for le in leases if le.holder]  # a per-call row gone: taken over
            there = store.lease_rows(ones) if ones else set()
            for lease in leases:
                if lease.holder and lease.row_id not in there:
                    lease.taken = True
                    continue
                gone = sum(cost for i, cost in lease.kept.items() if i in found)
                if found.intersection(lease.kept) or lease.due(now, clock, ttl):
                    amount = max(0, lease.amount - gone)
                    if lease.lapsed(now, clock, ttl):  # its free room may be another's now
                        amount, lease.stale = lease.holds(found), True
                    self._write_lease(store, lease, amount, now)
                    written.append((lease, amount))
        renewed = self._clock()
        for lease, amount in written:
            lease.amount, lease.renewed = amount, renewed  # else the next round tries again
            lease.kept = {i: cost for i, cost in lease.kept.items() if i not in found}

    def _drop_stranded(self, store: BudgetWrites) -> list[str]:
        """Drop the rows earlier give-backs could not (the database away, or locked past the
        wait); the ones dropped, to forget once committed. Left, each held its money for 15
        minutes as another process's, and a call that fitted was refused meanwhile, told to
        retry in seconds (test_unanswered_renewal.py)."""
        stranded = list(self._stranded)
        for row in stranded:
            store.drop_lease(row)
        return stranded

    def _give_back(self, leases: list[Lease]) -> None:
        self._refused.forget(le.key for le in leases)
        try:
            with self.ledger.budget_transaction() as store:
                for lease in leases:
                    store.drop_lease(lease.row_id)
                stranded = self._drop_stranded(store)
            self._stranded.difference_update(stranded)
        except Exception:  # the call must not fail for this: its next write drops them
            if leases:  # (none: rows given back before, which stay quiet)
                log.warning(
                    "could not give back %d budget lease(s); they go with this process's next "
                    "write to the ledger, or expire",
                    len(leases),
                )
            self._stranded.update(lease.row_id for lease in leases)
        finally:
            self._returning.difference_update(le.row_id for le in leases)
