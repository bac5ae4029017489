"""A hard budget removed and set again while calls it admitted are in flight: the calls stay
held, and the budget set again admits only what is left beside them."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.records import Budget, new_span_row_id
from tests.factories import make_span

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
UNIT = 1_000_000
SALES = Budget(tenant="acme", department="sales", period="month", limit=10 * UNIT, currency="USD")


def _admitted(gate: BudgetGate, most: int) -> list[Reservation]:
    """Calls of 1 unit admitted one after another until refused (or ``most``)."""
    got: list[Reservation] = []
    for _ in range(most):
        try:
            held = gate.admit(
                call_id=new_span_row_id(),
                tenant="acme",
                department="sales",
                estimate=Estimate(UNIT, "USD"),
                now=NOV,
            )
        except BudgetExceeded:
            break
        assert held is not None
        got.append(held)
    return got


@pytest.mark.parametrize("share", [0.25, 0.0], ids=["gateway", "cli"])
def test_calls_in_flight_under_a_removed_budget_stay_held_by_the_one_set_again(
    db_url: str, share: float
) -> None:
    """`ometer budget rm 1` and `budget set` again (or DEPARTMENT_BUDGETS dropping a
    department and bringing it back) while a gateway runs 8 calls of 1 under a limit of 10:
    2 more fit, on either gateway. The removal deleted the budget with its lease rows, and
    the new budget, under a new id, counted none of the 8: 18 calls ran (failed before)."""
    ledger = Ledger(db_url)
    old = ledger.save_budget(SALES)
    gates = [
        BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=share, ttl=3600, clock=lambda: 0.0)
        for _ in range(2)
    ]
    try:
        running = _admitted(gates[0], 8)
        assert len(running) == 8
        ledger.remove_budget(old.id or 0)
        assert ledger.budgets() == []
        for gate in gates:  # each reads the budgets: none
            gate.cache.refresh()
            assert gate.budgets_for("acme", "sales") == []
        again = ledger.save_budget(SALES)
        for gate in gates:
            gate.cache.refresh()
        more = _admitted(gates[1], 10) + _admitted(gates[0], 10)
        assert len(more) == 2
        assert [b.id for b in ledger.budgets()] == [again.id]
        ledger.record([make_span(id=r.id, started_at=NOV, cost_total=UNIT) for r in running + more])
        for gate in gates:
            gate.cache.refresh()
        assert _admitted(gates[1], 1) == []  # spent up: 10 of 10
    finally:
        for gate in gates:
            gate.close(give_back=False)
        ledger.dispose()


def test_a_removed_budget_is_in_no_list_and_removed_once(db_url: str) -> None:
    ledger = Ledger(db_url)
    sales = ledger.save_budget(SALES)
    support = ledger.save_budget(Budget(**{**_fields(SALES), "department": "support"}))
    ledger.remove_budget(sales.id or 0)
    assert ledger.budgets() == [support]
    from ollama_meter.errors import BudgetError

    with pytest.raises(BudgetError, match=f"no budget with id {sales.id}"):
        ledger.remove_budget(sales.id or 0)
    ledger.dispose()


def _fields(budget: Budget) -> dict[str, object]:
    return {f: getattr(budget, f) for f in ("tenant", "department", "period", "limit", "currency")}


def test_a_removed_budget_set_again_in_another_currency_is_a_new_one(db_url: str) -> None:
    """What its leases hold is in the old currency, which the new budget does not count: it
    is set as a new budget; one still in force for the scope is changed in place."""
    ledger = Ledger(db_url)
    usd = ledger.save_budget(SALES)
    ledger.remove_budget(usd.id or 0)
    eur = ledger.save_budget(Budget(**{**_fields(SALES), "currency": "EUR"}))
    assert eur.id != usd.id
    assert ledger.save_budget(SALES).id == eur.id  # in force: changed in place, as before
    assert [(b.id, b.currency) for b in ledger.budgets()] == [(eur.id, "USD")]
    ledger.dispose()


def test_a_row_whose_source_was_edited_to_its_full_length_is_removed(db_url: str) -> None:
    """`budget rm` is what a row edited by hand is to be fixed with: its mark of removal fits
    the column however long the source was made."""
    from sqlalchemy import text

    ledger = Ledger(db_url)
    sales = ledger.save_budget(SALES)
    with ledger.write() as conn:
        conn.execute(text("UPDATE budgets SET source = 'x123456789abcdef'"))
    ledger.remove_budget(sales.id or 0)
    assert ledger.budgets() == []
    ledger.dispose()
