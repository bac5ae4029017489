"""Why a hard budget refuses a call: the one line a caller reads (CLI exit 3, gateway 429)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ollama_meter.budgets._estimate import Estimate
from ollama_meter.budgets._leases import Lease
from ollama_meter.errors import BudgetExceeded
from ollama_meter.periods import Window, current_period
from ollama_meter.records import PERIOD_ADVERB, Budget, format_micros

IN_FLIGHT_RETRY_AFTER = 5
"""Seconds to wait when only money held by calls in flight is in the way."""


def _seconds_until(end: datetime, now: datetime) -> int:
    """Whole seconds until ``end``, rounded up (at least 1): a retry then is in the next period."""
    return max(1, -((now - end) // timedelta(seconds=1)))


def refusal(
    lease: Lease, spent: int, held: int, need: int, now: datetime, tz: ZoneInfo
) -> BudgetExceeded:
    """Why the call does not fit ``lease``'s budget; ``held`` > 0 means only calls in flight
    are in the way.

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
    hint = (
        "; set a smaller reply cap (num_predict, max_tokens, max_output_tokens) or a shorter "
        "prompt to fit"
        if need and spent < budget.limit
        else ""
    )
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
