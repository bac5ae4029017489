"""Budgets changed while calls are in flight: the money those calls hold stays held."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import Budget, BudgetGate, Estimate
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.records import parse_department_budgets

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)


def _env(ledger: Ledger, value: dict[str, Any]) -> None:
    """What every `ometer` process started with ``DEPARTMENT_BUDGETS=value`` does first."""
    ledger.sync_budgets("env", parse_department_budgets(json.dumps(value), currency="USD"))


def _admit(gate: BudgetGate, call: str, amount: int) -> Any:
    return gate.admit(
        call_id=call, tenant="acme", department="sales", estimate=Estimate(amount, "USD"), now=NOV
    )


@pytest.mark.parametrize(
    "changed",
    [
        {"sales": {"monthly": 10, "thresholds": [50]}},
        {"sales": {"monthly": 9}},
        {"sales": {"monthly": 10, "daily": 10}},
    ],
    ids=["thresholds", "lower-limit", "another-period"],
)
def test_department_budgets_changed_while_a_call_runs_keep_its_hold(
    db_url: str, changed: dict[str, Any]
) -> None:
    """A process started with another DEPARTMENT_BUDGETS (a new threshold, a new limit) while
    a call runs elsewhere: the budget is the same one, so that call's bound stays held and
    the next call is decided against it. Recreated, the holds of every call in flight (in
    every process and gateway) were dropped with the old row, and as many calls again were
    admitted on top of them."""
    ledger = Ledger(db_url)
    _env(ledger, {"sales": {"monthly": 10}})
    running, other = (BudgetGate(ledger, tz=ZoneInfo("UTC"), ttl=0) for _ in range(2))
    in_flight = _admit(running, "a", 6_000_000)
    _env(ledger, changed)
    with pytest.raises(BudgetExceeded, match="calls in flight hold 6.000000"):
        _admit(other, "b", 6_000_000)
    running.settle(in_flight)
    other.settle(_admit(other, "b", 3_000_000))


def test_department_budgets_changed_mid_period_do_not_fire_alerts_again(db_url: str) -> None:
    """Alerts fire once per budget, tenant, period and threshold: a changed limit in
    DEPARTMENT_BUDGETS is the same budget, not a new one whose 75 % fires a second time."""
    from ollama_meter.records import Alert

    ledger = Ledger(db_url)
    _env(ledger, {"sales": {"monthly": 10}})
    (before,) = ledger.budgets()
    assert before.id is not None
    fired = Alert(
        id=0,
        budget_id=before.id,
        tenant="acme",
        department="sales",
        period="month",
        period_label="2026-11",
        period_start=datetime(2026, 11, 1, tzinfo=UTC),
        threshold=75,
        spent=8_000_000,
        limit=before.limit,
        currency="USD",
    )
    with ledger.budget_transaction() as store:
        assert store.claim_alert(fired, NOV) is not None
    _env(ledger, {"sales": {"monthly": 10.5}})
    (after,) = ledger.budgets()
    assert (after.id, after.limit) == (before.id, 10_500_000)
    with ledger.budget_transaction() as store:
        assert store.claim_alert(fired, NOV) is None


def test_a_new_budget_never_takes_the_id_of_a_removed_one(db_url: str) -> None:
    """Alerts and leases hang on a budget's id: a new budget under a removed one's id (SQLite
    reused the highest) inherited its alerts, so thresholds the removed budget had reached
    this period never fired for the new one, whatever its scope."""
    ledger = Ledger(db_url)
    sales = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10, currency="USD")
    )
    ledger.remove_budget(sales.id or 0)
    support = ledger.save_budget(
        Budget(tenant="acme", department="support", period="month", limit=10, currency="USD")
    )
    assert support.id != sales.id


def test_lease_rows_killed_processes_left_are_forgotten_a_day_after_their_end(
    db_url: str,
) -> None:
    """Nobody gives back the leases of a process killed outright: their rows stayed for good,
    one per budget, tenant and period the process had served."""
    from datetime import timedelta

    from sqlalchemy import text

    from ollama_meter.records import LeaseKey

    ledger = Ledger(db_url)
    budget = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10, currency="USD")
    )
    assert budget.id is not None
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    october = LeaseKey(budget.id, "acme", datetime(2026, 10, 1, tzinfo=UTC))
    november = LeaseKey(budget.id, "acme", datetime(2026, 11, 1, tzinfo=UTC))
    with ledger.budget_transaction() as store:
        store.put_lease("killed-long-ago", october, 5, now - timedelta(days=20))
        store.put_lease("killed-an-hour-ago", november, 5, now - timedelta(hours=1))
    with ledger.budget_transaction() as store:
        store.put_lease("alive", november, 5, now + timedelta(minutes=15))
        assert store.held(november, now) == 5  # an expired row is never counted as held
    with ledger.read() as conn:
        ids = sorted(r[0] for r in conn.execute(text("SELECT id FROM budget_reservations")))
    assert ids == ["alive", "killed-an-hour-ago"]
