"""Two gateways' gates and a per-call reservation on one ledger, driven through admissions,
settlements, time and budget edits."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.records import Budget, new_span_row_id
from tests.factories import make_span

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
UNIT = 1_000_000
LATER_IN_DECEMBER = datetime(2026, 12, 1, 0, 7, tzinfo=UTC)
"""Within a hold's 15 minutes of 1 December's first instant: the keeper threads, off here,
renew the holds of calls running longer (36 hours on, every hold had lapsed, as a process
frozen that long loses its own: 101 of 100 held, a model's fault, not the gates')."""

steps = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(0, 2), st.integers(1, 40)),
        st.tuples(st.just("wait"), st.integers(1, 40), st.just(0)),
        st.tuples(st.just("turn"), st.just(0), st.just(0)),
        st.tuples(st.just("spool"), st.integers(0, 9), st.integers(0, 100)),
        st.tuples(st.just("drain"), st.just(0), st.just(0)),
        st.tuples(st.just("finish"), st.integers(0, 9), st.integers(0, 100)),
        st.tuples(st.just("soft"), st.booleans(), st.just(0)),
        st.tuples(st.just("limit"), st.integers(10, 150), st.just(0)),
    ),
    max_size=30,
)


@dataclass
class World:
    ledger: Ledger
    budget: Budget
    gates: list[BudgetGate]
    running: list[tuple[int, Reservation, datetime]] = field(default_factory=list)
    spooled: list[tuple[str, int, datetime]] = field(default_factory=list)
    now: datetime = NOV

    def spent(self) -> int:
        start = self.now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        kept = sum(c for _, c, at in self.spooled if start <= at < end)
        with self.ledger.budget_snapshot() as store:
            return store.spent(self.budget, "acme", start, end) + kept

    def held(self) -> int:
        return sum(r.amount for _, r, at in self.running if at.month == self.now.month)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
@example(
    plan=[
        ("admit", 0, 1),
        ("soft", True, 0),
        ("admit", 0, 99),
        ("soft", False, 0),
        ("admit", 0, 20),
    ]
)
@example(plan=[("turn", 0, 0), ("admit", 0, 100), ("turn", 0, 0), ("admit", 2, 1)])
def test_hard_admissions_never_pass_the_limit(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[str, int, int]]
) -> None:
    """After every call a hard budget admits, what the period spent (its spooled spans too)
    and what its calls in flight hold fit the limit in force: through two gateways' leases
    and a per-call reservation, calls ended, spooled and settled, time passing, a month
    turning, the limit changed, and the budget made soft and hard again. The pinned example
    failed before: soft, 99 was spent beside a call in flight holding 1; hard again, a
    gateway's lease from before admitted 20 more in memory (120 of 100)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('lease')}/l.db"
    ledger = Ledger(url)
    budget = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=100 * UNIT, currency="USD")
    )
    clock = [0.0]
    gates = [
        BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=share, ttl=0, clock=lambda: clock[0])
        for share in (0.25, 0.25, 0.0)
    ]
    w = World(ledger, budget, gates)
    try:
        for op, a, b in plan:
            if op == "admit":
                call = new_span_row_id()
                try:
                    got = gates[a].admit(
                        call_id=call,
                        tenant="acme",
                        department="sales",
                        estimate=Estimate(b * UNIT, "USD"),
                        now=w.now,
                    )
                except BudgetExceeded:
                    continue
                if got is None:  # soft: admitted on nothing, spent at once
                    ledger.record([make_span(started_at=w.now, cost_total=b * UNIT)])
                    continue
                w.running.append((a, got, w.now))
                spent, held = w.spent(), w.held()
                assert spent + held <= w.budget.limit, (spent, held, w.budget.limit)
            elif op in ("finish", "spool") and w.running:
                g, res, at = w.running.pop(a % len(w.running))
                cost = res.amount * b // 100
                gates[g].ended(res, cost)
                if op == "spool":  # its span waits for the database: kept in the lease
                    w.spooled.append((res.id, cost, at))
                    gates[g].settle(res, recorded=False)
                    continue
                ledger.record([make_span(id=res.id, started_at=at, cost_total=cost)])
                gates[g].settle(res)
            elif op == "drain":
                ledger.record(
                    [make_span(id=i, started_at=at, cost_total=c) for i, c, at in w.spooled]
                )
                w.spooled.clear()
            elif op == "turn":
                w.now = datetime(2026, 12, 1, tzinfo=UTC) if w.now == NOV else LATER_IN_DECEMBER
            elif op == "wait":
                clock[0] += a
            elif op == "soft":
                w.budget = replace(w.budget, hard=not a)
                ledger.save_budget(w.budget)
            elif op == "limit":
                w.budget = replace(w.budget, limit=a * UNIT)
                ledger.save_budget(w.budget)
    finally:
        for g in gates:
            g.close()
        ledger.dispose()


def test_a_soft_spell_seen_while_a_renewal_waits_for_the_ledger_is_not_forgotten(
    tmp_path: Path,
) -> None:
    """A reload that finds the budget soft while a renewal of its lease waits for the write
    lock: the renewal, ending after it, marked the lease fresh again, and once hard again it
    admitted 20 more in memory on the room it had before 99 were spent while soft."""
    db = tmp_path / "l.db"
    ledger = Ledger(f"sqlite:///{db}")
    budget = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=100 * UNIT, currency="USD")
    )
    clock = [0.0]
    gate = BudgetGate(
        ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=3600, clock=lambda: clock[0]
    )

    def admit(amount: int) -> Reservation | None:
        return gate.admit(
            call_id=new_span_row_id(),
            tenant="acme",
            department="sales",
            estimate=Estimate(amount * UNIT, "USD"),
            now=NOV,
        )

    first = admit(1)  # a lease of 25, 1 held
    ledger.save_budget(replace(budget, hard=False))  # this gate reads it in an hour, or when told
    clock[0] += 8 * 60  # past half the lease's life: the next call renews it
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, which the renewal waits for
    second: list[Reservation | None] = []
    renewing = threading.Thread(target=lambda: second.append(admit(1)))
    renewing.start()
    while gate.renewals < 2:  # inside the renewal, waiting for the lock
        threading.Event().wait(0.01)
    gate.reload_soon()
    assert [b.hard for b in gate.budgets_for("acme", "sales")] == [False]  # seen meanwhile
    holder.execute("ROLLBACK")
    renewing.join()
    ledger.record([make_span(started_at=NOV, cost_total=99 * UNIT)])  # spent while soft
    ledger.save_budget(budget)  # hard again: 99 spent, 2 held
    gate.reload_soon()
    with pytest.raises(BudgetExceeded):
        admit(20)
    for done in (first, *second):
        assert done is not None
        gate.settle(done, recorded=False)
    gate.close()
    holder.close()
    ledger.dispose()
