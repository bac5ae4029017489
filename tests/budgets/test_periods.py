"""Budgets over time: several periods at once, period edges in the ledger's zone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import Budget, BudgetGate, Estimate
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from tests.factories import make_span

BERLIN = ZoneInfo("Europe/Berlin")
NOV = datetime(2026, 11, 20, 11, tzinfo=UTC)  # noon in Berlin, a Friday
MIDNIGHT = datetime(2026, 11, 20, 23, tzinfo=UTC)  # the next day starts in Berlin
DECEMBER = datetime(2026, 11, 30, 23, tzinfo=UTC)  # the next month starts in Berlin


def _budget(ledger: Ledger, period: str, limit: int) -> Budget:
    return ledger.save_budget(
        Budget(tenant="acme", department="sales", period=period, limit=limit, currency="USD")
    )


def _admit(gate: BudgetGate, call: str, amount: int, now: datetime = NOV) -> Any:
    estimate = Estimate(amount, "USD")
    return gate.admit(call_id=call, tenant="acme", department="sales", estimate=estimate, now=now)


def _spent(ledger: Ledger, cost: int, at: datetime) -> None:
    ledger.record([make_span(started_at=at, cost_total=cost, unpriced=False)])


@pytest.mark.parametrize("order", ["daily first", "monthly first"])
def test_a_call_no_later_period_can_fit_is_not_told_to_retry_in_seconds(
    db_url: str, order: str
) -> None:
    """`budget set sales --daily 5 --monthly 10`: the month's room is spent, the day's is held
    by a call in flight. The refusal came from the first budget in order, the day's: "retry in
    a few seconds", Retry-After 5, so a client obeying it asked again every 5 seconds until the
    month ended. A call is refused with the budget that frees up last."""
    ledger = Ledger(db_url)
    periods = [("day", 5_000_000), ("month", 10_000_000)]
    for period, limit in periods if order == "daily first" else periods[::-1]:
        _budget(ledger, period, limit)
    _spent(ledger, 8_000_000, datetime(2026, 11, 2, 11, tzinfo=UTC))  # earlier this month
    running, other = (BudgetGate(ledger, tz=BERLIN, ttl=0) for _ in range(2))
    in_flight = _admit(running, "a", 2_000_000)
    with pytest.raises(BudgetExceeded) as refused:
        _admit(other, "b", 4_000_000)  # fits the day once "a" settles; never the month
    assert refused.value.retry_after == (DECEMBER - NOV).total_seconds()
    assert "the next period starts 2026-12-01 00:00 CET" in str(refused.value)
    running.settle(in_flight)


def test_of_two_spent_budgets_the_refusal_names_the_later_period_start(db_url: str) -> None:
    """Both the day and the month are spent: Retry-After at midnight was refused again then."""
    ledger = Ledger(db_url)
    _budget(ledger, "day", 5_000_000)
    _budget(ledger, "month", 10_000_000)
    _spent(ledger, 10_000_000, NOV)
    with pytest.raises(BudgetExceeded) as refused:
        _admit(BudgetGate(ledger, tz=BERLIN, ttl=0), "b", 1)
    assert refused.value.retry_after == (DECEMBER - NOV).total_seconds()
