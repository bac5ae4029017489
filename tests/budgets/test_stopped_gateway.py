"""A gateway stopped longer than its lease rows live (Ctrl-Z in a terminal, a VM paused), with
a call in flight: meanwhile another takes the room its rows held, since they expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.records import Budget

NOV = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
ONE = Estimate(1_000_000, "USD")


def _admit(gate: BudgetGate, call_id: str, now: datetime) -> bool:
    try:
        gate.admit(call_id=call_id, tenant="acme", department="sales", estimate=ONE, now=now)
    except BudgetExceeded:
        return False
    return True


def test_a_lease_that_expired_while_its_process_was_stopped_admits_nothing_unchecked(
    sqlite_url: str,
) -> None:
    """Its lease thread, first to run when the process went on, wrote the row back whole (a
    quarter of the room) beside the other's, and the process admitted calls against it in
    memory: 24 calls of 1.00 past a limit of 100.00 another gateway had filled. Now the row
    is written back with what its calls in flight hold, and the next call renews it, reading
    what others hold: refused."""
    ledger = Ledger(sqlite_url)  # on SQLite the test's times are the ledger's clock
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=100_000_000, currency="USD")
    )
    ticks = [0.0]
    stopped = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, clock=lambda: ticks[0])
    other = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25)
    try:
        assert _admit(stopped, "long", NOV)  # a long call, in flight throughout
        later = NOV + timedelta(minutes=20)  # stopped for 20 minutes: its row expired
        ticks[0] += 20 * 60
        taken = 0
        while _admit(other, f"o{taken}", later):
            taken += 1
        assert taken == 100  # the room the stopped one's expired row held is the other's
        with stopped._lock:  # the process goes on: its lease thread's round comes first
            stopped._maintain(later)
        extra = sum(_admit(stopped, f"s{i}", later) for i in range(30))
        # The call in flight throughout is past the limit already (it runs on): nothing more.
        assert (taken, extra) == (100, 0)
    finally:
        stopped.close(give_back=False)
        other.close(give_back=False)
        ledger.dispose()
