"""What a process holds of a budget: leases in the ledger, and the calls admitted against them.

Plain data for :mod:`ollama_meter.budgets._gate`, which decides (see its docstring), and
what a renewal reads of the ledger for them (:func:`settled`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ollama_meter._forks import ChildLock
from ollama_meter.periods import Window
from ollama_meter.records import Budget, LeaseKey, Usage

if TYPE_CHECKING:
    from ollama_meter.budgets._store import BudgetReads

RESERVATION_TTL = timedelta(minutes=15)
"""How long a lease holds if its process dies without giving it back."""
IDLE_RELEASE_SECONDS = 30.0
"""A lease with no call in flight for this long is given back."""
NEVER_WRITTEN = datetime.min.replace(tzinfo=UTC)
Slot = tuple[LeaseKey, str]
"""A lease's place in its process: its key, and the call it holds for alone ("": shared)."""


def lease_id() -> str:
    return "L" + os.urandom(12).hex()[:25]


def holder_of(call_id: str, department: str, model: str) -> str:
    """What a per-call reservation's rows are named by: the call, the department it is charged
    to and its model (the tenant and budget are the row's own)."""
    return f"{call_id}\x00{department}\x00{model}"


def hold_id(holder: str, budget_id: int) -> str:
    """What the lease rows that hold one call's bound alone (a per-call reservation) in one
    budget begin with: a row is this and a random tail (:func:`hold_row`), so two processes
    never write one row, even for calls of the same id.

    Made from the call's span id, which only the call's client knows while it runs and which
    it names to a gateway in front of Ollama (``X-Ometer-Client-Span``): a gateway on the same
    ledger finds the rows by it, for a call charged to the same department and model, and
    takes the hold over (``BudgetGate.admit``'s ``adopt``). A hash (64 bits): the row does not
    show the span id to whoever reads the table."""
    return "H" + hashlib.sha256(f"{holder}\x00{budget_id}".encode()).hexdigest()[:16]


def hold_row(holder: str, budget_id: int) -> str:
    """A new row of a per-call reservation: its :func:`hold_id` and 36 random bits."""
    return hold_id(holder, budget_id) + os.urandom(5).hex()[:9]


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one admitted call holds: its bound, in the leases it was admitted against."""

    id: str
    budget_ids: tuple[int, ...]
    keys: tuple[LeaseKey, ...] = ()
    amount: int = 0
    rows: tuple[str, ...] = ()
    """The lease rows' ids in the ledger, which the call's journal line notes: were this
    process killed, whoever records the call frees them (else they held it for the TTL)."""
    holder: str = ""
    """The call its leases hold for alone (a per-call reservation), or "" (shared leases)."""
    usage: Usage | None = None
    """What its bound prices (:attr:`Estimate.usage`): the call's charge if its process dies
    before it ends (its journal line notes it)."""

    @property
    def slots(self) -> list[Slot]:
        """Where the leases that hold it are kept in its process."""
        return [(key, self.holder) for key in self.keys]


@dataclass(slots=True)
class Lease:
    """Money this process holds for one budget, tenant and period."""

    budget: Budget
    tenant: str
    window: Window
    holder: str = ""
    """The one call this lease holds for (a per-call reservation: its row is the call's
    :func:`hold_id`), or "": the process's calls share it."""
    before: datetime | None = None
    """The start of the period before :attr:`window`'s, in the zone it was cut in: others'
    leases keyed to a start between it and the window's end are over the same days
    (:func:`settled`)."""
    row_id: str = ""
    amount: int = 0
    """What the lease row holds in the ledger."""
    in_flight: dict[str, int] = field(default_factory=dict)
    """Bounds of the calls admitted and not yet settled."""
    used: int = 0
    """Bounds of calls settled since the row was written: their spans are in the ledger."""
    kept: dict[str, int] = field(default_factory=dict)
    """Costs (bounds, if never ended) of settled calls whose span was not in the ledger then
    (spooled), by span id: held until a transaction that reads the spend finds the span."""
    spent: int = 0
    """Settled spend read at the last renewal."""
    renewed: float = 0.0
    last_used: float = 0.0
    stale: bool = True
    """Not written yet, or written long enough ago to renew before its row expires."""
    unheld: int = 0
    """Reloads that found its budget not hard (:func:`stale_unless_hard`): a renewal that
    began before the latest leaves it stale."""
    expires_at: datetime = NEVER_WRITTEN
    """When its row expires by this host's wall clock, which may step (see :meth:`due`); the
    row itself says so by the ledger's clock, which other processes judge it by."""
    taken: bool = False
    """A gateway took its row over (a per-call reservation's), the call its own: the row is not
    written again (the call was held twice from then on)."""

    def __post_init__(self) -> None:
        if not self.row_id:
            self.row_id = hold_row(self.holder, self.key.budget_id) if self.holder else lease_id()

    @property
    def key(self) -> LeaseKey:
        return LeaseKey(self.budget.id or 0, self.tenant, self.window.start)

    @property
    def slot(self) -> Slot:
        """Where the process keeps it: its budget, tenant and period, and its one call's id."""
        return self.key, self.holder

    @property
    def free(self) -> int:
        return self.amount - sum(self.in_flight.values()) - self.used - sum(self.kept.values())

    def span_ids(self) -> list[str]:
        """The spans of its calls in flight and kept: any of them may be in the ledger already."""
        return [*self.in_flight, *self.kept]

    def holds(self, recorded: set[str]) -> int:
        """What it must hold for its calls but those whose spans are ``recorded`` (in the
        ledger: the spend read after counts their costs). A call's span is committed before
        its hold is settled (by the write-behind thread, or the meter after its commit): an
        admission in between that counted both refused a call that fitted exactly."""
        holding = [*self.in_flight.items(), *self.kept.items()]
        return sum(amount for i, amount in holding if i not in recorded)

    def counted(self, recorded: set[str]) -> None:
        """The spend now counts the spans ``recorded`` (a transaction that read them committed):
        a kept one is done with, a call in flight holds nothing more until it settles."""
        self.kept = {i: cost for i, cost in self.kept.items() if i not in recorded}
        for i in recorded.intersection(self.in_flight):
            self.in_flight[i] = 0

    def due(self, now: datetime, clock: float, ttl: timedelta) -> bool:
        """Time to write the row again: half its life gone by this process's clock (``clock``,
        monotonic), or by the wall clock (``now``), which may have stepped forward."""
        if self.taken:
            return False
        return clock - self.renewed > ttl.total_seconds() / 2 or now >= self.expires_at - ttl / 2

    def lapsed(self, now: datetime, clock: float, ttl: timedelta) -> bool:
        """Its row may have expired in the ledger (by :data:`LAPSED_SHARE` of its life, on
        either clock: the ledger's may run ahead of this host's): others may have taken the
        room it held, so what it had free is no longer this process's to admit against."""
        gone = ttl * (1 - LAPSED_SHARE)
        return clock - self.renewed > ttl.total_seconds() * LAPSED_SHARE or (
            now >= self.expires_at - gone
        )


LAPSED_SHARE = 0.75
"""Of its rows' life, how long a lease may go unwritten before its row may have expired: it is
written at half (:meth:`Lease.due`), so past this its process stood still (stopped, paused)."""


def stale_unless_hard(leases: Iterable[Lease], budgets: Iterable[Budget]) -> None:
    """Mark ``leases`` whose budget is not among the hard ``budgets`` now (made soft, or
    removed) to be renewed before any call is admitted against them again. Meanwhile calls
    it covered held nothing and spent freely: a budget hard again that kept its lease (a
    call in flight held it) admitted against it in memory as if nothing had been spent
    (99 spent of a limit of 100 while soft, then 20 more admitted: test_lease_model.py)."""
    hard = {budget.id for budget in budgets if budget.hard}
    for lease in leases:
        if lease.budget.id not in hard:
            lease.stale, lease.unheld = True, lease.unheld + 1


def in_force(store: BudgetReads, leases: Iterable[Lease]) -> bool:
    """Have ``leases`` renewed against their budgets as the ledger has them now, not as this
    process last read them; whether any was other. A limit lowered elsewhere was read only
    every 5 s, and each renewal meanwhile took a new slice of the old limit (two gateways
    spent 100 of a limit lowered from 100 to 5: test_lowered_limit.py). One made soft,
    removed or moved to another currency keeps the limit read before (it only refuses more)
    until the budgets are read again."""
    leases = list(leases)
    fresh = store.budgets([lease.key.budget_id for lease in leases])
    changed = False
    for lease in leases:
        budget = fresh.get(lease.key.budget_id)
        if budget == lease.budget:
            continue
        changed = True
        if budget is not None and budget.hard and budget.currency == lease.budget.currency:
            lease.budget, lease.stale = budget, True  # refused now, it stays to renew
    return changed


def recorded(store: BudgetReads, leases: list[Lease]) -> set[str]:
    """The spans of ``leases``' calls (in flight, or kept) that are in the ledger now."""
    return store.recorded(ids) if (ids := [i for le in leases for i in le.span_ids()]) else set()


def settled(
    store: BudgetReads,
    leases: list[Lease],
    at: datetime,
    returning: Collection[str] = (),
    mates: Collection[Lease] = (),
) -> tuple[set[str], list[tuple[Lease, int, int]]]:
    """The spans of ``leases``' calls in the ledger, and each lease's spend and what other
    processes hold (at ``at``; not ``returning``, this process's rows being given back, whose
    calls are all in the ledger), read so that every call is counted once, and no call twice
    but another process's between its commit and its next renewal (its lease holds it still).
    ``mates``, this process's other leases of the same key (each call of a per-call
    reservation has its own row), are counted as this process knows them (:meth:`Lease.holds`:
    a call committed holds nothing more, one ended its cost), as a lease's own calls are,
    unless their rows are gone: a gateway took the hold over, the call its own.

    A PostgreSQL write transaction reads each statement as the ledger is then (READ
    COMMITTED): commits land between them. The holds are read before the spend: a call
    committed and its lease given back meanwhile is in the spend (else in neither, and a
    call past the limit was admitted). The spans are asked about before and after: when a
    call of these leases was committed meanwhile (else the spend counted it and its lease
    held it too, and a call that fitted exactly was refused), all is read again. Only these
    leases' calls, settling, do that: each once."""
    everyone = [*leases, *mates]
    found = recorded(store, everyone)
    while True:
        reads = []
        there = store.lease_rows([mate.row_id for mate in mates]) if mates else set()
        for lease in leases:
            kin = [mate for mate in mates if mate.key == lease.key]
            ours = (lease.row_id, *(mate.row_id for mate in kin), *returning)
            # Keyed to another start over these days: a process cutting periods in the zone
            # ``db rollup --zone`` moved from, or to (it reads the zone again within 5 s).
            # Counted: each held the whole limit unseen by the other (test_zone_moved.py).
            over = None if lease.before is None else (lease.before, lease.window.end)
            others = store.held(lease.key, at, exclude=ours, over=over)
            others += sum(mate.holds(found) for mate in kin if mate.row_id in there)
            start, end = lease.window.start, lease.window.end
            reads.append((lease, store.spent(lease.budget, lease.tenant, start, end), others))
        again = recorded(store, everyone)
        if again == found:
            return found, reads
        found = again


WATCH_SECONDS = 30.0
"""How old this process's view of a budget's spend may get before alerts read it again."""


@dataclass(slots=True)
class Watch:
    """This process's view of a budget's spend, for deciding when alerts must look."""

    spent: int
    read_at: float
    local: int = 0


MAX_WATCHES = 1000
"""The spends one process watches (a budget's, per tenant and period). A budget for each
tenant covers any name an open gateway is sent, and a past period is never looked at again:
past this many, those read over :data:`WATCH_SECONDS` ago (of no use) are dropped, and if more
than half are left, all (a spend not watched is read from the ledger: only slower)."""


class Watches:
    """This process's views of budgets' spends, at most :data:`MAX_WATCHES`."""

    def __init__(self) -> None:
        self._by_key: dict[LeaseKey, Watch] = {}
        self._lock = ChildLock()

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: LeaseKey) -> Watch | None:
        return self._by_key.get(key)

    def keep(self, key: LeaseKey, spent: int, now: float) -> None:
        """Watch ``spent``, read at ``now``, for ``key``."""
        with self._lock:
            if len(self._by_key) >= MAX_WATCHES:
                by_key = self._by_key.items()
                fresh = {k: w for k, w in by_key if now - w.read_at <= WATCH_SECONDS}
                self._by_key = fresh if len(fresh) <= MAX_WATCHES // 2 else {}  # sweeps stay rare
            self._by_key[key] = Watch(spent, now)


def crossed(budget: Budget, before: int, after: int) -> bool:
    """Whether spend going from ``before`` to ``after`` reaches a threshold not reached before."""
    return any(before * 100 < t * budget.limit <= after * 100 for t in budget.thresholds)
