"""Where each budget stands now: spent, held, share of the limit, projection to period end."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ollama_meter.ledger import capped_note
from ollama_meter.periods import Window, current_period
from ollama_meter.records import EACH_TENANT, Budget, LeaseKey, format_micros

if TYPE_CHECKING:
    from ollama_meter.budgets._store import BudgetStore


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    budget: Budget
    tenant: str
    window: Window
    spent: int
    held: int
    projected: int
    refused_bound: int | None = None
    """The bound of the call this budget last refused for want of room this period (its
    latest ``refused`` alert), None if it refused none."""
    uncounted: tuple[tuple[str, int], ...] = ()
    """(currency, micro-units) spent this period in the budget's scope in other currencies
    than its own, by currency: not in :attr:`spent` (amounts in two currencies are never
    added), and not capped by it. Calls its rules priced in another currency before they
    changed currency (the budget set again in the new one) are here."""
    capped: bool = False
    """:attr:`spent` is a lower bound: a sum in its scope passed the largest the ledger's
    rollups hold and the spans behind it were pruned (see :meth:`capped_note`)."""

    def capped_note(self) -> str | None:
        """What a capped :attr:`spent` is, said in a line; None when it is exact."""
        if not self.capped:
            return None
        whose = f"the spend of budget {self.budget.id} ({self.budget.scope(self.tenant)})"
        return capped_note(whose, f"its spent in {self.budget.period} {self.window.label}")

    def uncounted_note(self) -> str | None:
        """What this budget does not count, said in a line; None when it counts everything."""
        if not self.uncounted:
            return None
        amounts = " and ".join(f"{format_micros(m)} {c}" for c, m in self.uncounted)
        scope = self.budget.scope(self.tenant)
        return (
            f"budget {self.budget.id} ({scope}) counts {self.budget.currency} only: {amounts} "
            f"spent in {self.budget.period} {self.window.label} is not in its spent and not "
            f"capped by it (amounts in two currencies are never added)"
        )

    @property
    def percent(self) -> int:
        return self.spent * 100 // self.budget.limit

    @property
    def state(self) -> str:
        """``ok``, ``warning`` (first threshold reached), ``refusing`` (hard, below 100 %: the
        call it last refused this period would still not fit what is left, so calls like it
        are refused), ``over`` or ``exhausted`` (hard, at 100 %)."""
        if self.spent >= self.budget.limit:
            return "exhausted" if self.budget.hard else "over"
        if (
            self.budget.hard
            and self.refused_bound is not None
            and self.spent + self.refused_bound > self.budget.limit
        ):
            return "refusing"
        if self.spent * 100 >= min(self.budget.thresholds) * self.budget.limit:
            return "warning"
        return "ok"


_US = timedelta(microseconds=1)


def project(spent: int, window: Window, now: datetime) -> int:
    """Spend at period end if the pace so far holds (integer micro-units).

    In whole microseconds, as the times are: through float seconds, 1.001 s in became
    1000 ms (1.001 * 1000 is 1000.999...), and the projection 0.1 % too high."""
    total = (window.end - window.start) // _US
    elapsed = min(max((now - window.start) // _US, 0), total)
    if elapsed <= 0:
        return spent
    return spent * total // elapsed


def budget_status(
    ledger: BudgetStore, *, tz: ZoneInfo, now: datetime, budgets: Sequence[Budget] | None = None
) -> list[BudgetStatus]:
    """One line per budget, and per tenant for budgets that give each tenant its own allowance.

    ``budgets``: those to report, read already (the dashboard's, without the rows it cannot
    read); by default every budget of the ledger, or its LedgerError naming a row it cannot."""
    rows = []
    # One aggregate per period (day, week, month) answers every budget of that period:
    # spend per (tenant, department, currency), summed as each budget's scope says.
    spend: dict[str, dict[tuple[str, str, str], int]] = {}
    # Read before the snapshot's transaction, not inside it: a second connection while one
    # is held failed on a server with a single connection left for this process ("too many
    # clients"), and a pool of busy threads each holding one waited for another.
    if budgets is None:
        budgets = ledger.budgets()
    starts = {current_period(p, tz=tz, now=now).start for p in {b.period for b in budgets}}
    with ledger.budget_snapshot() as store:
        at = store.clock(now)  # leases live by the ledger's clock, not this host's
        refused = store.refusals(starts) if starts else {}
        held = store.held_all(starts, at) if starts else {}
        scopes: dict[str, dict[tuple[str, str | None], list[tuple[str, str, int]]]] = {}
        for budget in budgets:
            assert budget.id is not None
            window = current_period(budget.period, tz=tz, now=now)
            if budget.period not in spend:
                spend[budget.period] = store.spend_by_scope(window.start, window.end)
                scopes[budget.period] = _by_scope(spend[budget.period])
            sums = spend[budget.period]
            tenants = [budget.tenant]
            if budget.tenant == EACH_TENANT:
                # Those who spent (a name on refused calls only is anyone's to make up), and
                # those it refused (who spent: a refusal alert needs that, _gate.py).
                seen = {
                    t
                    for (t, dept, _), cost in sums.items()
                    if budget.department in (None, dept) and cost
                }
                seen.update(
                    k.tenant
                    for k in refused
                    if k.budget_id == budget.id and k.period_start == window.start
                )
                tenants = sorted(seen) or [EACH_TENANT]
            capped_keys: frozenset[tuple[str, str, str]] = getattr(sums, "capped", frozenset())
            for tenant in tenants:
                spent, uncounted, capped = 0, Counter[str](), False
                for department, currency, cost in scopes[budget.period].get(
                    (tenant, budget.department), ()
                ):
                    if currency == budget.currency:
                        spent += cost
                        capped = capped or (tenant, department, currency) in capped_keys
                    elif cost:
                        uncounted[currency] += cost
                key = LeaseKey(budget.id, tenant, window.start)
                projected = project(spent, window, now)
                others = tuple(sorted(uncounted.items()))
                rows.append(
                    BudgetStatus(
                        budget,
                        tenant,
                        window,
                        spent,
                        held.get(key, 0),
                        projected,
                        refused.get(key),
                        others,
                        capped,
                    )
                )
    return rows


def _by_scope(
    sums: dict[tuple[str, str, str], int],
) -> dict[tuple[str, str | None], list[tuple[str, str, int]]]:
    """``sums`` per (tenant, department) and per (tenant, None): a budget's scope, each entry
    (department, currency, cost). 1,000 department budgets each looked through every
    department's sums: a million steps."""
    found: dict[tuple[str, str | None], list[tuple[str, str, int]]] = {}
    for (tenant, department, currency), cost in sums.items():
        for scope in ((tenant, department), (tenant, None)):
            found.setdefault(scope, []).append((department, currency, cost))
    return found
