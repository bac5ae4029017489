"""A hard budget made soft and hard again while a gateway's lease of it holds a call."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.records import Budget
from tests.factories import make_span

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)


def test_a_budget_hard_again_after_a_soft_spell_reads_what_was_spent_meanwhile(
    db_url: str,
) -> None:
    """While soft, calls hold nothing and spend freely; hard again, the lease the gateway kept
    from before (a long call in flight held it) was admitted against in memory as if nothing
    had been spent: 99 spent of a limit of 100 while soft, 1 held, and 20 more admitted."""
    ledger = Ledger(db_url)
    hard = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=100_000_000, currency="USD")
    )
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=0)

    def admit(call: str, amount: int) -> object:
        return gate.admit(
            call_id=call,
            tenant="acme",
            department="sales",
            estimate=Estimate(amount, "USD"),
            now=NOV,
        )

    long_call = admit("long", 1_000_000)  # a lease of a quarter of the room: 25
    ledger.save_budget(replace(hard, hard=False))
    assert admit("free", 99_000_000) is None  # soft: admitted on nothing
    ledger.record([make_span(started_at=NOV, cost_total=99_000_000)])  # it spent 99
    ledger.save_budget(hard)  # hard again: 99 spent, 1 held by the long call, nothing left
    with pytest.raises(BudgetExceeded):
        admit("past", 20_000_000)
    gate.settle(long_call, recorded=False)
