"""Why a hard budget refuses a call: the one line a caller reads (CLI exit 3, gateway 429);
and the refusals a process read in the ledger, which it answers again from memory
(:class:`Refusals`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ollama_meter.budgets._estimate import Estimate
from ollama_meter.budgets._leases import Lease
from ollama_meter.budgets._thresholds import refused_alert
from ollama_meter.errors import BudgetExceeded
from ollama_meter.periods import Window, current_period
from ollama_meter.records import (
    EACH_TENANT,
    PERIOD_ADVERB,
    Alert,
    Budget,
    LeaseKey,
    format_micros,
)

IN_FLIGHT_RETRY_AFTER = 5
"""Seconds to wait when only money held by calls in flight is in the way."""


def _seconds_until(end: datetime, now: datetime) -> int:
    """Whole seconds until ``end``, rounded up (at least 1): a retry then is in the next period."""
    return max(1, -((now - end) // timedelta(seconds=1)))


def refusal(
    lease: Lease,
    spent: int,
    held: int,
    need: int,
    now: datetime,
    tz: ZoneInfo,
    hint: str = "",
) -> BudgetExceeded:
    """Why the call does not fit ``lease``'s budget; ``held`` > 0 means only calls in flight
    are in the way; ``hint`` what the call can change to fit (:attr:`Estimate.hint`).

    A budget of no one department (a tenant's, or each tenant's) counts what the tenant's
    other departments spent: its refusal as one department reads it (``narrow``, what a
    gateway key is told) says that there is no room, not what was spent."""
    budget, tenant, window = lease.budget, lease.tenant, lease.window
    named = (
        f"{budget.kind} budget {budget.id} for {budget.scope(tenant)} "
        f"({PERIOD_ADVERB[budget.period]} {window.label})"
    )
    head = (
        f"{named} refuses the call: spent "
        f"{format_micros(spent)} of {format_micros(budget.limit)} {budget.currency}"
    )
    needs = f"this call may cost up to {format_micros(need)}"
    until_end = _seconds_until(window.end, now)
    wide = budget.department is None
    if held:
        tail = f"{needs}, which fits once they settle: retry in a few seconds"
        return BudgetExceeded(
            f"{head}, and calls in flight hold {format_micros(held)} more; {tail}",
            budget_id=budget.id or 0,
            retry_after=min(IN_FLIGHT_RETRY_AFTER, until_end),
            narrow=f"{named} has no room for the call until calls in flight settle; {tail}"
            if wide
            else None,
        )
    resumes = window.end.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
    if not need or spent >= budget.limit:  # no smaller call fits
        hint = ""
    tail = (
        f"{needs}{hint}; the next period starts {resumes}"
        if need
        else f"the next period starts {resumes}"
    )
    return BudgetExceeded(
        f"{head}; {tail}",
        budget_id=budget.id or 0,
        retry_after=until_end,
        narrow=f"{named} has no room for the call; {tail}" if wide else None,
    )


def mismatch(
    budget: Budget, tenant: str, window: Window, estimate: Estimate, now: datetime
) -> BudgetExceeded:
    """A call priced in another currency than the budget counts."""
    return BudgetExceeded(
        f"{budget.kind} budget {budget.id} for {budget.scope(tenant)} counts "
        f"{budget.currency}, but this model is priced in {estimate.currency}: the budget "
        "could not count the call, so it is refused. Use one currency for the budget and "
        "the price rules",
        budget_id=budget.id or 0,
        retry_after=_seconds_until(window.end, now),
    )


def unbounded(
    budgets: Sequence[Budget], tenant: str, why: str, now: datetime, tz: ZoneInfo
) -> BudgetExceeded:
    """A call no bound holds (``why``): no hard budget can admit it, whatever it has left."""
    budget = next(b for b in budgets if b.hard)
    window = current_period(budget.period, tz=tz, now=now)
    return BudgetExceeded(
        f"hard budget {budget.id} for {budget.scope(tenant)} refuses the call: {why}, so "
        "nothing bounds what it may cost; call without it (a soft budget only alerts)",
        budget_id=budget.id or 0,
        retry_after=_seconds_until(window.end, now),
    )


def refused_alerts(lease: Lease, spent: int, held: int, need: int) -> list[Alert]:
    """The alert a refusal fires: none when calls in flight are in the way (``held``: room that
    comes back within seconds); for a budget of each tenant, only for a tenant that spent (no
    made-up name per alert)."""
    budget = lease.budget
    if held or not (spent > 0 or budget.tenant != EACH_TENANT):
        return []
    return [refused_alert(budget, lease.tenant, lease.window, spent, need)]


@dataclass(frozen=True, slots=True)
class Refused:
    """What the ledger said when ``budget`` (as it was then) had no room for a bound of ``need``."""

    budget: Budget
    need: int
    spent: int
    held: int
    at: float
    """The gate's clock (monotonic) when it was read."""
    now: datetime
    """And the wall clock's time the call was judged at (leases expire by it)."""


MAX_REMEMBERED = 1000
"""Refusals a process remembers (a budget for each tenant refuses any name it is sent): past
this many, those too old to answer from are dropped, and if that is not half, all."""


class Refusals:
    """The refusals this process read in the ledger, answered again from memory.

    Each refusal was a ledger transaction (SQLite's write lock, a PostgreSQL advisory lock) under
    the gate's lock: a department that spent its budget and kept calling made every other
    department's call wait for the gate behind its refusals, and the database wrote once per
    refusal. A call whose bound is at least one refused in the same budget (unchanged), tenant and
    period is refused again in memory, for ``recheck`` seconds after the ledger was read (the
    gate's budgets ``ttl``: a limit changed elsewhere takes as long to be seen), unless this
    process did something that could make room (:meth:`forget`: a call of the budget ended or
    settled, a lease given back), or the budget changed. Room made elsewhere (another
    process's calls settle, its lease goes back or expires, ``ometer reprice`` lowers the spend)
    is seen by the first call after ``recheck``. A new period is another key. Answering from
    memory only ever refuses: it admits nothing, so no limit is passed.
    """

    def __init__(self, recheck: float, clock: Callable[[], float]) -> None:
        self.recheck, self._clock = recheck, clock
        self._by_key: dict[LeaseKey, Refused] = {}

    def note(self, lease: Lease, spent: int, held: int, need: int, now: datetime) -> None:
        """The ledger refused ``need`` in ``lease``'s budget just now, a call at ``now`` (``held``:
        calls in flight are in the way)."""
        if self.recheck <= 0:
            return
        at = self._clock()
        if len(self._by_key) >= MAX_REMEMBERED:
            fresh = {k: r for k, r in self._by_key.items() if at - r.at < self.recheck}
            self._by_key = fresh if len(fresh) <= MAX_REMEMBERED // 2 else {}
        self._by_key[lease.key] = Refused(lease.budget, need, spent, held, at, now)

    def forget(self, keys: Iterable[LeaseKey]) -> None:
        """Room may have come back in these (no lock needed: one dict operation each)."""
        for key in keys:
            self._by_key.pop(key, None)

    def again(
        self,
        budgets: Iterable[Budget],
        tenant: str,
        need: int,
        now: datetime,
        tz: ZoneInfo,
        alerts: list[Alert],
        hint: str = "",
    ) -> None:
        """Raise the refusal of a call of ``tenant`` and bound ``need`` in ``budgets`` from
        memory, with its alerts added to ``alerts`` (as :meth:`BudgetGate._renew` does);
        return when only the ledger can answer. No lock: it reads one dict entry a budget."""
        refusals: list[BudgetExceeded] = []
        at = self._clock()
        for budget in budgets:
            window = current_period(budget.period, tz=tz, now=now)
            known = self._by_key.get(LeaseKey(budget.id or 0, tenant, window.start))
            if (
                known is None
                or known.budget != budget
                or need < known.need
                or not 0 <= at - known.at < self.recheck
                or abs((now - known.now).total_seconds()) >= self.recheck  # a clock stepped
            ):
                continue
            lease = Lease(budget, tenant, window)  # what the refusal names
            refusals.append(refusal(lease, known.spent, known.held, need, now, tz, hint))
            alerts += refused_alerts(lease, known.spent, known.held, need)
        if refusals:  # the budget that frees up last, as the ledger's refusal says
            raise max(refusals, key=lambda r: r.retry_after)
