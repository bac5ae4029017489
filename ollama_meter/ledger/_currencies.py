"""One currency per budget and the prices it counts: checked where both are written.

A budget sums the cost of the calls it covers in its own currency. A price rule
in another currency would price some of those calls where the budget cannot see
them: the budget would say 0 spent while money goes out. Rules apply to every
tenant, so a budget and every rule that can still price a call (in force today
or later) must share one currency. The check runs inside the transaction that
adds a budget or a rule, so two processes cannot slip a mismatch in together.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

from sqlalchemy import Connection

from ollama_meter.errors import BudgetError, PricingError
from ollama_meter.ledger import _budgets, _prices
from ollama_meter.ledger._meta import ledger_zone
from ollama_meter.periods import day_of
from ollama_meter.records import Budget, PriceRule


def _today(conn: Connection, now: datetime | None) -> date:
    """The ledger's date: rules are in force from and until its midnights, as they price."""
    return day_of(now or datetime.now(UTC), ledger_zone(conn) or UTC)


def _live_rules(conn: Connection, now: datetime | None) -> list[PriceRule]:
    today = _today(conn, now)
    return [
        r
        for r in _prices.readable_rules(conn)[0]  # a broken row binds calls of its own models
        if r.effective_until is None or r.effective_until > today
    ]


def _names(rules: Sequence[PriceRule]) -> str:
    shown = ", ".join(f"{r.id} ({r.pattern})" for r in rules[:5])
    return shown + (f" and {len(rules) - 5} more" if len(rules) > 5 else "")


def check_budgets(
    conn: Connection, budgets: Sequence[Budget], *, now: datetime | None = None
) -> None:
    """Raise :class:`BudgetError` if a live price rule is in a currency ``budgets`` don't count."""
    rules = _live_rules(conn, now)
    for budget in budgets:
        other = [r for r in rules if r.currency != budget.currency]
        if other:
            currencies = ", ".join(sorted({r.currency for r in other}))
            raise BudgetError(
                f"a {budget.currency} budget for {budget.scope()} could not count calls priced "
                f"in {currencies} by rule(s) {_names(other)}: it would show them as 0. Set the "
                f"budget in {currencies} (--currency or OMETER_CURRENCY), or replace those "
                f"rules with {budget.currency} ones"
            )


def check_rules(
    conn: Connection, rules: Sequence[PriceRule], *, now: datetime | None = None
) -> None:
    """Raise :class:`PricingError` if a budget could not count calls ``rules`` price."""
    today = _today(conn, now)
    budgets = _budgets.readable_budgets(conn)[0]  # a broken row refuses calls of its own scope
    for rule in rules:
        if rule.effective_until is not None and rule.effective_until <= today:
            continue
        other = [b for b in budgets if b.currency != rule.currency]
        if other:
            currencies = ", ".join(sorted({b.currency for b in other}))
            ids = ", ".join(f"{b.id} ({b.scope()})" for b in other[:5])
            raise PricingError(
                f"the rule for {rule.pattern!r} prices in {rule.currency}, but budget(s) {ids} "
                f"count {currencies} and could not count its calls. Give the rule "
                f'--currency {currencies} (or `currency = "{currencies}"` in TOML), or '
                "change the budgets first"
            )
