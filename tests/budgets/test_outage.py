"""Hard budgets across a ledger outage: a call whose span went to the spool keeps its cost in
this process's lease until the span is in the ledger, then not a moment longer.

The spool is played by hand here: the gate is told a call settled with its span not recorded
(as the meter tells it when the write spooled), and the span is recorded later (as a drain
does, in this process or any other). Quantities are exact: after the outage the gateway admits
what the limit allows to the micro-unit, no more, no less.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter.budgets import Budget, BudgetGate, Estimate
from ollama_meter.budgets._leases import RESERVATION_TTL
from ollama_meter.errors import BudgetExceeded, LedgerError
from ollama_meter.ledger import Ledger
from ollama_meter.records import LeaseKey
from tests.budgets.test_gate_locks import _write_locked
from tests.factories import make_span

LIMIT = 10_000_000
NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
MONTH = datetime(2026, 11, 1, tzinfo=UTC)


def _budget(ledger: Ledger, limit: int = LIMIT) -> Budget:
    return ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=limit, currency="USD")
    )


def _held(ledger: Ledger, budget: Budget, now: datetime = NOV) -> int:
    with ledger.budget_snapshot() as store:
        return store.held(LeaseKey(budget.id or 0, "acme", MONTH), now)


def _admit(gate: BudgetGate, call: str, amount: int, now: datetime = NOV) -> Any:
    return gate.admit(
        call_id=call,
        tenant="acme",
        department="sales",
        estimate=Estimate(amount, "USD"),
        now=now,
    )


def _spooled_call(gate: BudgetGate, bound: int, cost: int, now: datetime = NOV) -> Any:
    """A call admitted on ``bound`` that cost ``cost`` and whose span went to the spool: its
    span, to be recorded once the database is back."""
    span = make_span(started_at=now, cost_total=cost)
    reservation = _admit(gate, span.id, bound, now)
    gate.ended(reservation, cost)
    gate.settle(reservation, recorded=False)
    return span


def test_a_spooled_calls_cost_is_counted_once_after_the_spool_drains(db_url: str) -> None:
    """Its cost went to the lease's ``kept`` for good: once the span was in the ledger it was
    counted in the spend and again in the lease, at every renewal for the rest of the month,
    and the gateway refused calls the budget allows."""
    ledger = Ledger(db_url)
    saved = _budget(ledger)
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=0, clock=lambda: 0.0)
    span = _spooled_call(gate, 2_000_000, 1_500_000)
    ledger.record([span])  # the database is back: the spool drains
    with pytest.raises(BudgetExceeded):
        _admit(gate, "over", LIMIT - 1_500_000 + 1)
    whole = _admit(gate, "rest", LIMIT - 1_500_000)  # exactly what is left
    assert _held(ledger, saved) == LIMIT - 1_500_000
    gate.settle(whole)
    assert _held(ledger, saved) == 0  # nothing is left to hold: given back


def test_a_spooled_call_holds_its_cost_until_its_span_is_in_the_ledger(db_url: str) -> None:
    """Never earlier: another gateway must not spend what a span in the spool has spent."""
    ledger = Ledger(db_url)
    saved = _budget(ledger)
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=0, clock=lambda: 0.0)
    other = BudgetGate(ledger, tz=ZoneInfo("UTC"), ttl=0, clock=lambda: 0.0)
    span = _spooled_call(gate, 2_000_000, 1_500_000)
    with pytest.raises(BudgetExceeded):  # the database is back, the spool not drained yet
        _admit(gate, "over", LIMIT - 1_500_000 + 1)
    with pytest.raises(BudgetExceeded):
        _admit(other, "over", LIMIT - 1_500_000 + 1)
    gate.close()  # a stopping gateway keeps the row of a lease whose spans are not in
    assert _held(ledger, saved) >= 1_500_000
    ledger.record([span])
    gate._maintain(NOV)  # the lease keeper's round: the span is in, its hold goes
    assert _held(ledger, saved) == 0
    other.settle(_admit(other, "rest", LIMIT - 1_500_000))


def test_an_idle_gateways_lease_goes_back_once_its_spooled_spans_are_in(db_url: str) -> None:
    """A lease holding a spooled call's cost was never idle, so never given back: other
    gateways saw its whole slice taken for the rest of the month."""
    ledger = Ledger(db_url)
    saved = _budget(ledger)
    quiet = [0.0]
    gate = BudgetGate(
        ledger,
        tz=ZoneInfo("UTC"),
        lease_share=0.25,
        idle_release=30,
        ttl=0,
        clock=lambda: quiet[0],
    )
    other = BudgetGate(ledger, tz=ZoneInfo("UTC"), ttl=0, clock=lambda: 0.0)
    span = _spooled_call(gate, 1_000_000, 400_000)
    assert _held(ledger, saved) == 2_500_000  # a quarter of the room
    ledger.record([span])  # another process drained the spool
    quiet[0] = 60.0
    gate._maintain(NOV)
    assert _held(ledger, saved) == 0
    other.settle(_admit(other, "rest", LIMIT - 400_000))


_tenants = (f"t{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def shared_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """One SQLite ledger for every example (each has its own tenant and budget)."""
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('outage') / 'ledger.db'}")
    yield ledger
    ledger.dispose()


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.integers(1, 2_000_000), st.integers(0, 100), st.booleans(), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    share=st.sampled_from([0.0, 0.25, 1.0]),
)
@example(calls=[(1, 0, True, False)], share=0.0)  # a spooled call that cost nothing
def test_after_any_outage_the_room_left_is_exactly_the_limit_less_the_spend(
    shared_ledger: Ledger, calls: list[tuple[int, int, bool, bool]], share: float
) -> None:
    """Calls whose spans were committed, spooled and drained, or spooled and still waiting:
    exactly limit - spend - waiting is admitted; once every span is in, exactly what is left,
    here and in another gateway."""
    ledger, tenant = shared_ledger, next(_tenants)
    ledger.save_budget(
        Budget(tenant=tenant, department="sales", period="month", limit=10**9, currency="USD")
    )
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=share, ttl=0, clock=lambda: 0.0)
    other = BudgetGate(ledger, tz=ZoneInfo("UTC"), ttl=0, clock=lambda: 0.0)

    def admit(gate: BudgetGate, call: str, amount: int) -> Any:
        estimate = Estimate(amount, "USD")
        return gate.admit(
            call_id=call, tenant=tenant, department="sales", estimate=estimate, now=NOV
        )

    spent = waiting = 0
    pending = []
    for bound, percent, spooled, drained in calls:
        cost = bound * percent // 100
        span = make_span(started_at=NOV, tenant=tenant, cost_total=cost)
        reservation = admit(gate, span.id, bound)
        gate.ended(reservation, cost)
        if spooled:
            gate.settle(reservation, recorded=False)
            if drained:
                ledger.record([span])
                spent += cost
            else:
                pending.append(span)
                waiting += cost
        else:
            ledger.record([span])
            gate.settle(reservation, recorded=True)
            spent += cost
    room = 10**9 - spent - waiting
    with pytest.raises(BudgetExceeded):
        admit(gate, "over", room + 1)
    exact = admit(gate, "exact", room)
    gate.ended(exact, 0)  # it cost nothing after all
    gate.settle(exact)
    ledger.record(pending)  # the rest of the spool drains
    gate._maintain(NOV)
    gate.close()
    with pytest.raises(BudgetExceeded):
        admit(other, "over", room + 1)
    other.settle(admit(other, "exact", room))


def test_a_lease_that_cannot_be_renewed_admits_nothing_once_due(sqlite_url: str) -> None:
    """The database away longer than a lease lives: the gateway admits against its lease in
    memory only while the row is surely live (half its life), then refuses budgeted calls as
    unchecked; it never admits on a row the ledger may take as expired. Once the database is
    back, its first renewal writes its spooled calls' costs into its row again."""
    ledger = Ledger(sqlite_url, wait=0.1)
    saved = _budget(ledger)
    quiet = [0.0]
    gate = BudgetGate(
        ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=3600, clock=lambda: quiet[0]
    )
    other = BudgetGate(ledger, tz=ZoneInfo("UTC"), ttl=3600, clock=lambda: 0.0)
    span = _spooled_call(gate, 1_000_000, 700_000)
    half = RESERVATION_TTL / 2
    with _write_locked(sqlite_url):
        quiet[0] = 60.0
        gate.settle(_admit(gate, "in-memory", 1_000_000, NOV + timedelta(minutes=1)))
        quiet[0] = half.total_seconds() + 1  # by this process's clock
        with pytest.raises(LedgerError):
            _admit(gate, "due", 1)
        quiet[0] = 60.0
        with pytest.raises(LedgerError):  # by the wall clock, which stepped
            _admit(gate, "stepped", 1, NOV + half)
    after = NOV + RESERVATION_TTL * 2  # its row expired meanwhile
    quiet[0] = RESERVATION_TTL.total_seconds() * 2
    assert _held(ledger, saved, after) == 0
    gate.settle(_admit(gate, "back", 1, after))
    # the spooled cost, and a quarter of the room it leaves: 0.700000 + 2.325000 (less 1)
    assert _held(ledger, saved, after) == 700_000 + 2_325_000
    with pytest.raises(BudgetExceeded):  # the spooled span is held, though not in the spend
        _admit(other, "over", LIMIT - _held(ledger, saved, after) + 1, after)
    ledger.record([span])
    gate._maintain(after)
    assert _held(ledger, saved, after) == 2_325_000  # the span's cost is in the spend now


def test_a_call_admitted_a_second_before_month_end_is_held_and_spent_in_its_own_month(
    sqlite_url: str,
) -> None:
    """Months end at midnight in the ledger's zone (Berlin here). A call admitted at 23:59:59
    on 30 November whose span went to the spool holds its cost in November's lease, and only
    there: December starts with its whole limit, and a wall clock stepping back an hour into
    November finds the cost still held, then spent there once the spool drains."""
    ledger = Ledger(sqlite_url)
    _budget(ledger)
    gate = BudgetGate(ledger, tz=ZoneInfo("Europe/Berlin"), lease_share=0.25, ttl=0)
    last = datetime(2026, 11, 30, 22, 59, 59, tzinfo=UTC)  # 23:59:59 in Berlin
    december = datetime(2026, 11, 30, 23, 0, 1, tzinfo=UTC)
    span = _spooled_call(gate, 2_000_000, 1_500_000, last)
    with pytest.raises(BudgetExceeded):
        _admit(gate, "dec-over", LIMIT + 1, december)
    gate.settle(_admit(gate, "dec", LIMIT, december))
    stepped_back = last - timedelta(hours=1)
    with pytest.raises(BudgetExceeded):
        _admit(gate, "nov-over", LIMIT - 1_500_000 + 1, stepped_back)
    ledger.record([span])
    with pytest.raises(BudgetExceeded):
        _admit(gate, "nov-over-again", LIMIT - 1_500_000 + 1, stepped_back)
    gate.settle(_admit(gate, "nov", LIMIT - 1_500_000, stepped_back))


def test_a_limit_lowered_below_the_spend_with_calls_in_flight_refuses_until_raised(
    sqlite_url: str,
) -> None:
    ledger = Ledger(sqlite_url)
    saved = _budget(ledger)
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=0, clock=lambda: 0.0)
    ledger.record([make_span(started_at=NOV, cost_total=4_000_000)])
    flying = _admit(gate, "flying", 1_000_000)
    ledger.save_budget(replace(saved, limit=3_000_000))
    with pytest.raises(BudgetExceeded, match="spent 4.000000 of 3.000000"):
        _admit(gate, "lowered", 1)
    span = make_span(id=flying.id, started_at=NOV, cost_total=600_000)
    gate.ended(flying, 600_000)
    ledger.record([span])
    gate.settle(flying)
    ledger.save_budget(replace(saved, limit=LIMIT))
    with pytest.raises(BudgetExceeded):
        _admit(gate, "over", LIMIT - 4_600_000 + 1)
    gate.settle(_admit(gate, "exact", LIMIT - 4_600_000))
