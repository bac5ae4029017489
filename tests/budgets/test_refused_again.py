"""A refusal the ledger just gave is said again from memory: a flood of refused calls (a
department that spent its hard budget and keeps calling) takes no ledger transaction per call,
so it neither writes the database nor holds the gate's lock the other budgets' calls need.

Calls are admitted again as soon as room comes back: at once when this process makes it (a
call settles or ends, a limit raised here, a new period), and after the budgets' ``ttl`` when
another process does (its lease goes back), as a limit changed elsewhere takes as long.
Counted by the engine's ``begin`` events: no timing in these tests.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event

from ollama_meter.budgets import Budget, BudgetGate, Estimate, Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.budgets.test_gate import BOUND, CALL_COST, NOV, Clock, budget, call, make_meter
from tests.factories import make_span

LIMIT = 10_000_000
TTL = 5.0


class Mono:
    """The gate's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def transactions(ledger: Ledger) -> Iterator[list[object]]:
    """The transactions begun on ``ledger`` while the block runs (reads and writes)."""
    begun: list[object] = []

    def seen(conn: Any) -> None:
        begun.append(conn)

    event.listen(ledger.engine, "begin", seen)
    try:
        yield begun
    finally:
        event.remove(ledger.engine, "begin", seen)


def _gate(ledger: Ledger, mono: Mono, **kw: Any) -> BudgetGate:
    return BudgetGate(ledger, tz=ZoneInfo("UTC"), ttl=TTL, clock=mono, **kw)


def _admit(gate: BudgetGate, call_id: str, amount: int, now: datetime = NOV) -> Reservation:
    reservation = gate.admit(
        call_id=call_id,
        tenant="acme",
        department="sales",
        estimate=Estimate(amount, "USD"),
        now=now,
    )
    assert reservation is not None
    return reservation


def _refused(gate: BudgetGate, amount: int, now: datetime = NOV) -> BudgetExceeded:
    with pytest.raises(BudgetExceeded) as refused:
        _admit(gate, "refused", amount, now)
    return refused.value


def _spent(ledger: Ledger, cost: int) -> None:
    ledger.record(
        [
            make_span(
                started_at=NOV, tenant="acme", department="sales",
                cost_total=cost, cost_tokens=cost, unpriced=False,
            )
        ]
    )  # fmt: skip


def test_refused_calls_in_a_row_take_no_ledger_transaction(db_url: str) -> None:
    ledger = Ledger(db_url)
    sales = ledger.save_budget(Budget("acme", "sales", "month", LIMIT, "USD"))
    _spent(ledger, LIMIT - 1)
    gate = _gate(ledger, Mono(), lease_share=0.25)
    first = _refused(gate, 2)  # read in the ledger: spend, holds, the refusal's alert
    with transactions(ledger) as begun:
        again = [_refused(gate, amount) for amount in [2] * 50 + [3, 1_000_000]]
    assert begun == []  # before: one write transaction per refused call
    assert {str(r) for r in again[:50]} == {str(first)}  # the same words, the same figures
    assert "may cost up to 1.000000" in str(again[-1]) and again[-1].budget_id == sales.id
    assert [a.spent for a in ledger.alerts() if a.kind == "refused"] == [LIMIT - 1]
    with transactions(ledger) as begun:  # a smaller bound than any refused: the ledger decides
        _admit(gate, "fits", 1)
    assert begun


def test_room_this_process_makes_admits_the_next_call_at_once(db_url: str) -> None:
    """Calls in flight hold the room: refused from memory until one of them ends or settles,
    then admitted, with no clock moved."""
    ledger = Ledger(db_url)
    ledger.save_budget(Budget("acme", "sales", "month", 2 * BOUND, "USD"))
    gate = _gate(ledger, Mono())
    running = [_admit(gate, "a", BOUND), _admit(gate, "b", BOUND)]
    assert "calls in flight hold" in str(_refused(gate, BOUND))
    with transactions(ledger) as begun:
        _refused(gate, BOUND)
    assert begun == []
    gate.ended(running[0], 0)  # it cost nothing: its bound is free once it settles
    gate.settle(running[0])
    gate.settle(_admit(gate, "c", BOUND))
    gate.settle(running[1])
    gate.close()


def test_a_limit_raised_or_a_new_period_admits_at_once(db_url: str) -> None:
    ledger = Ledger(db_url)
    sales = ledger.save_budget(Budget("acme", "sales", "month", LIMIT, "USD"))
    _spent(ledger, LIMIT)
    gate = _gate(ledger, Mono())
    _refused(gate, 1)
    december = datetime(2026, 12, 1, tzinfo=UTC)  # nothing spent yet
    gate.settle(_admit(gate, "december", 1, december))
    _refused(gate, 1)  # November is still spent
    ledger.save_budget(replace(sales, limit=LIMIT + 1))
    gate.reload_soon()  # this process changed it (another one: seen within the ttl)
    gate.settle(_admit(gate, "raised", 1))
    gate.close()


PROCESS_B = """
import sys
from datetime import UTC, datetime
from zoneinfo import ZoneInfo
from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.ledger import Ledger

gate = BudgetGate(Ledger(sys.argv[1]), tz=ZoneInfo("UTC"))
held = gate.admit(call_id="b", tenant="acme", department="sales",
                  estimate=Estimate(int(sys.argv[2]), "USD"), now=datetime.fromisoformat(sys.argv[3]))
print("held", flush=True)
sys.stdin.readline()
gate.settle(held)  # lease_share 0: its lease goes back at once
print("freed", flush=True)
sys.stdin.readline()
gate.close()
"""


def test_room_another_process_frees_is_seen_within_the_budgets_ttl(db_url: str) -> None:
    """Process B holds the room, then gives it back: A, which read B's hold when it refused,
    refuses from memory for less than the ttl its budgets are read again in (a limit changed
    elsewhere takes as long), then reads the ledger and admits."""
    ledger = Ledger(db_url)
    ledger.save_budget(Budget("acme", "sales", "month", 2 * BOUND, "USD"))
    mono = Mono()
    a = _gate(ledger, mono)
    args = [sys.executable, "-c", PROCESS_B, db_url, str(2 * BOUND), NOV.isoformat()]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as b:
        assert b.stdin is not None and b.stdout is not None
        assert b.stdout.readline() == "held\n"
        assert "calls in flight hold" in str(_refused(a, BOUND))
        b.stdin.write("settle\n")
        b.stdin.flush()
        assert b.stdout.readline() == "freed\n"
        with transactions(ledger) as begun:
            mono.now += TTL - 0.5
            _refused(a, BOUND)  # what it read a moment ago
        assert begun == []
        mono.now += 0.5
        a.settle(_admit(a, "a", BOUND))
        b.stdin.close()
    assert b.returncode == 0
    a.close()


def test_a_flood_of_refused_calls_leaves_one_span_each_and_one_alert(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """Through the meter: every refused call is a rejected span, the refusal alert fires once,
    and the ledger is written once per refused call (its span), not twice."""
    meter = make_meter(db_url, Clock(NOV))
    budget(meter, CALL_COST + BOUND - 1)
    call(meter)
    with pytest.raises(BudgetExceeded):
        call(meter)
    assert meter.budgets is not None and meter.budgets.alerts is not None
    assert meter.budgets.alerts.flush(600.0)  # its alert delivered: no thread writes meanwhile
    with transactions(meter.ledger) as begun:
        for _ in range(20):
            with pytest.raises(BudgetExceeded, match="refuses the call"):
                call(meter)
    # A span each, and a read when a reload (prices, budgets) falls due: fewer than two a call. Before, the budget's transaction made each refusal two.
    assert 20 <= len(begun) < 40
    spans = meter.ledger.latest(SpanFilter(), 100)
    assert sorted(s.status for s in spans) == ["ok"] + ["rejected"] * 21
    assert [(a.kind, a.spent, a.delivered) for a in meter.ledger.alerts()] == [
        ("refused", CALL_COST, True)
    ]
