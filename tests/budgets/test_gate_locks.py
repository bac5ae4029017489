"""The budget gate under concurrency: an event loop never waits on a ledger transaction."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from ollama_meter._reloaded import WouldBlock
from ollama_meter.budgets import Budget, BudgetGate, Estimate
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.ledger.models import BUDGET_RESERVATIONS
from ollama_meter.records import LeaseKey

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
MONTH = datetime(2026, 11, 1, tzinfo=UTC)
LIMIT = 10_000_000
BOUND = Estimate(1_000_000, "USD")


def _budget(ledger: Ledger, department: str) -> Budget:
    return ledger.save_budget(
        Budget(tenant="acme", department=department, period="month", limit=LIMIT, currency="USD")
    )


def _held(ledger: Ledger, budget: Budget, now: datetime = NOV) -> int:
    with ledger.budget_snapshot() as store:
        return int(store.held(LeaseKey(budget.id or 0, "acme", MONTH), now))


def _admit(gate: BudgetGate, call: str, department: str, *, blocking: bool = True) -> Any:
    return gate.admit(
        call_id=call,
        tenant="acme",
        department=department,
        estimate=BOUND,
        now=NOV,
        blocking=blocking,
    )


def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if condition():
            return
        threading.Event().wait(0.025)
    raise AssertionError(f"still not {what} after 10 s")


def _keepers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "ometer-budget-leases"}


@contextmanager
def _write_locked(sqlite_url: str) -> Iterator[None]:
    """Another process's write transaction on the SQLite ledger, for as long as the block runs."""
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_in_memory_admission_never_waits_on_a_ledger_transaction(sqlite_url: str) -> None:
    """A thread renewing a lease holds the gate while the ledger is locked (another process
    writes): the event loop's admission must not wait for that, it hands the call to a thread."""
    ledger = Ledger(sqlite_url, wait=60.0)  # the renewal waits this long for the write lock
    _budget(ledger, "sales")
    support = _budget(ledger, "support")
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=3600)
    first = _admit(gate, "a", "sales")  # a lease with room for a few more sales calls
    assert first is not None
    outcome: dict[str, Any] = {}

    def renew() -> None:
        outcome["support"] = _admit(gate, "b", "support")

    def in_memory() -> None:
        try:
            outcome["sales"] = _admit(gate, "c", "sales", blocking=False)
        except WouldBlock as exc:
            outcome["sales"] = exc

    with _write_locked(sqlite_url):
        renewing = threading.Thread(target=renew)
        renewing.start()
        _until(gate._lock.locked, "renewing")
        loop = threading.Thread(target=in_memory)
        loop.start()
        # Still inside the other process's transaction: the renewal cannot have finished.
        _until(lambda: "sales" in outcome, "answered without the ledger")
        assert "support" not in outcome
    renewing.join(timeout=30)
    loop.join(timeout=30)
    assert outcome["support"] is not None  # the renewal went through once the ledger was free
    assert _held(ledger, support) == LIMIT // 4  # a quarter of the room, for the support call
    gate.settle(first)
    gate.settle(outcome["support"])
    if not isinstance(outcome["sales"], WouldBlock):
        gate.settle(outcome["sales"])
    gate.close()


def test_a_lease_in_use_at_close_is_given_back_when_its_call_settles(db_url: str) -> None:
    """A gateway stopping with a call in flight: the call's lease goes back when it ends, not
    after the idle time (the keeper of a closed gate would hold it until then, or forever)."""
    ledger = Ledger(db_url)
    sales = _budget(ledger, "sales")
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, idle_release=3600, ttl=3600)
    in_flight = _admit(gate, "a", "sales")
    gate.close()
    assert _held(ledger, sales) == LIMIT // 4  # its call is still running
    gate.settle(in_flight)
    assert _held(ledger, sales) == 0


def test_money_of_a_span_not_yet_in_the_ledger_stays_held_while_the_gateway_is_quiet(
    db_url: str,
) -> None:
    """A call settled while its span waits in the spool (the ledger was away) still counts
    against the budget; its lease row must not expire, or another gateway spends the same
    money and the budget overshoots once the spool drains."""
    keepers = _keepers()  # other tests' gates
    ledger = Ledger(db_url)
    sales = _budget(ledger, "sales")
    # On PostgreSQL the rows expire by the server's real clock: room for a busy machine to
    # be late with a renewal (on SQLite the test's clock decides).
    ttl = timedelta(seconds=0.8 if db_url.startswith("sqlite") else 2)
    mine, other = (
        BudgetGate(ledger, tz=ZoneInfo("UTC"), reservation_ttl=ttl, ttl=3600) for _ in range(2)
    )
    spooled = _admit(mine, "a", "sales")
    mine.settle(spooled, recorded=False)  # its span is in the spool, not in the ledger
    later = NOV + 2 * ttl
    with ledger.read() as conn:  # by the ledger's clock: the test's on SQLite, else the server's
        written = conn.execute(select(func.max(BUDGET_RESERVATIONS.c.expires_at))).one()[0]
    # Renewed past the moment it would have expired.
    _until(lambda: _held(ledger, sales, written + ttl) == BOUND.amount, "kept")
    with pytest.raises(BudgetExceeded):
        other.admit(
            call_id="b",
            tenant="acme",
            department="sales",
            estimate=Estimate(LIMIT, "USD"),
            now=later,
        )
    for gate in (mine, other):
        gate.close()
    _until(lambda: not _keepers() - keepers, "stopped")  # no thread writes leases any more


def test_a_refusal_leaves_other_budgets_admitted_in_memory(sqlite_url: str) -> None:
    """One budget spent up must not send every other budget's calls to a thread and a ledger
    write (a refused call left an empty lease behind, which looked idle to be given back)."""
    ledger = Ledger(sqlite_url)
    _budget(ledger, "sales")
    _budget(ledger, "support")
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=3600)
    first = _admit(gate, "a", "support")  # a lease with room for more support calls
    with pytest.raises(BudgetExceeded):
        gate.admit(
            call_id="b",
            tenant="acme",
            department="sales",
            estimate=Estimate(LIMIT + 1, "USD"),
            now=NOV,
        )
    renewals = gate.renewals
    second = _admit(gate, "c", "support", blocking=False)  # in memory, as before the refusal
    assert second is not None and gate.renewals == renewals
    for reservation in (first, second):
        gate.settle(reservation)
    gate.close()
