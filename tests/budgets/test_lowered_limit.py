"""A hard budget's limit lowered while two gateways hold leases on it: what they admit after.

A gateway admits against its lease in memory and reads the budgets again every 5 s; the
limit an admin lowers meanwhile (``ometer budget set``, the admin API) is in the ledger at
once. Each gate here reads the budgets once an hour (``ttl``): every admission after the
change falls in that window, the worst case."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.records import Budget, new_span_row_id
from tests.factories import make_span

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
UNIT = 1_000_000
START, END = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)


def _call(gate: BudgetGate, ledger: Ledger, bound: int) -> bool:
    """One call of ``bound`` through ``gate``, costing its bound (the worst case); admitted?"""
    call = new_span_row_id()
    try:
        got = gate.admit(
            call_id=call,
            tenant="acme",
            department="sales",
            estimate=Estimate(bound, "USD"),
            now=NOV,
        )
    except BudgetExceeded:
        return False
    assert got is not None
    gate.ended(got, bound)
    ledger.record([make_span(id=call, started_at=NOV, cost_total=bound)])
    gate.settle(got)
    return True


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    old=st.integers(20, 400),
    new=st.integers(1, 100),
    before=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 10)), max_size=8),
    after=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 10)), min_size=1, max_size=60),
)
@example(old=100, new=5, before=[(0, 1), (1, 1)], after=[(0, 1), (1, 1)] * 30)
def test_a_lowered_limit_is_passed_by_at_most_what_the_leases_had_free(
    tmp_path_factory: pytest.TempPathFactory,
    old: int,
    new: int,
    before: list[tuple[int, int]],
    after: list[tuple[int, int]],
) -> None:
    """After the limit is lowered, the gateways admit in memory only what their leases had
    free then: spend ends at most that past the new limit (or past what was spent already),
    never renewing a lease under the old limit. The pinned example failed before: each
    renewal in the window read the old limit from memory and took a new slice of it, and
    two gateways spent 62 units of a limit lowered from 100 to 5 in 60 calls of 1 (their
    leases had 41.5 units free when it was lowered)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('lowered')}/l.db"
    ledger = Ledger(url)
    budget = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=old * UNIT, currency="USD")
    )
    gates = [
        BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=3600, clock=lambda: 0.0)
        for _ in range(2)
    ]
    try:
        for g, units in before:
            _call(gates[g], ledger, units * UNIT)
        free = sum(lease.free for gate in gates for lease in gate._leases.values())
        with ledger.budget_snapshot() as store:
            spent_then = store.spent(budget, "acme", START, END)
        ledger.save_budget(replace(budget, limit=new * UNIT))  # `ometer budget set`, elsewhere
        for g, units in after:
            _call(gates[g], ledger, units * UNIT)
        with ledger.budget_snapshot() as store:
            spent = store.spent(budget, "acme", START, END)
        assert spent <= max(new * UNIT, spent_then) + free, (spent, new * UNIT, free)
        for gate in gates:  # once a gateway reads the budgets again, nothing more
            gate.reload_soon()
            assert not _call(gate, ledger, UNIT) or spent + UNIT <= new * UNIT
    finally:
        for gate in gates:
            gate.close()
        ledger.dispose()


def test_what_two_gateways_spend_of_a_limit_lowered_from_100_to_5(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The README's figures: two gateways have each admitted a call of 1 unit (leases of a
    quarter of the room: 25 and 18.5 units) when the limit is lowered from 100 to 5
    units; each then admits calls of 1 unit until refused, before it reads the budgets again.
    Before, they spent all 100 (each renewal took a slice of the old limit); now 2 + what
    their leases had free (24 + 17.5: 41 calls), and not a call more once read."""
    url = f"sqlite:///{tmp_path_factory.mktemp('figures')}/l.db"
    ledger = Ledger(url)
    budget = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=100 * UNIT, currency="USD")
    )
    gates = [
        BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=3600, clock=lambda: 0.0)
        for _ in range(2)
    ]
    try:
        for gate in gates:
            assert _call(gate, ledger, UNIT)
        free = [lease.free for gate in gates for lease in gate._leases.values()]
        assert free == [24 * UNIT, 17_500_000]
        ledger.save_budget(replace(budget, limit=5 * UNIT))
        while sum(_call(gate, ledger, UNIT) for gate in gates):  # a call from each
            pass
        with ledger.budget_snapshot() as store:
            assert store.spent(budget, "acme", START, END) == 43 * UNIT
        for gate in gates:
            gate.reload_soon()
            assert not _call(gate, ledger, UNIT)
    finally:
        for gate in gates:
            gate.close()
        ledger.dispose()
