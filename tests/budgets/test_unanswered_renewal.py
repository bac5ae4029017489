"""A lease renewal whose COMMIT the PostgreSQL server took as it froze: the call is refused as
unchecked (no answer within OMETER_LEDGER_WAIT), and the server, resumed, commits the lease row
still in its socket. That row is the process's hold, counted once: the next renewal writes it
again, and closing gives it back. A process that forgot it (a new lease, holding nothing in its
memory) left the row to hold its slice for 15 minutes beside the next slice it took, so other
gateways, and its own calls, had that much less room (a quarter of it: 25 of 100 held twice).
So with a give-back the ledger could not take: the row goes with the process's next write."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, text

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger
from ollama_meter.records import Budget, new_span_row_id
from tests._pg import PgCluster
from tests.budgets.test_gate_locks import _write_locked
from tests.factories import make_span
from tests.integrity.test_frozen_server import quiet_passes, returns

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
UNIT = 1_000_000


@pytest.fixture
def url(module_cluster: PgCluster) -> str:
    from tests.conftest import _fresh_pg_database

    return _fresh_pg_database(module_cluster.url)


def _rows(ledger: Ledger) -> dict[str, int]:
    with ledger.read() as conn:
        query = text("SELECT id, amount_micros FROM budget_reservations")
        return {i: int(amount) for i, amount in conn.execute(query)}


def _admit(gate: BudgetGate) -> object:
    return gate.admit(
        call_id=new_span_row_id(),
        tenant="acme",
        department="sales",
        estimate=Estimate(UNIT, "USD"),
        now=NOV,
    )


@pytest.mark.parametrize("share", [0.25, 0.0])
def test_a_renewal_committed_unanswered_is_held_once(
    module_cluster: PgCluster, url: str, share: float
) -> None:
    ledger = Ledger(url, wait=1)
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=100 * UNIT, currency="USD")
    )
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=share, ttl=3600)
    gate.budgets_for("acme", "sales")  # read before: only the renewal meets the frozen server
    freezing = contextlib.ExitStack()
    wrote = [False]

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        wrote[0] = wrote[0] or statement.startswith("INSERT INTO budget_reservations")

    def freeze_before_commit(_conn: Any) -> None:
        if wrote[0] and not freezing._exit_callbacks:
            freezing.enter_context(module_cluster.frozen())

    event.listen(ledger.engine, "before_cursor_execute", note)
    event.listen(ledger.engine, "commit", freeze_before_commit)
    with freezing, pytest.raises(LedgerError, match="OMETER_LEDGER_WAIT"):
        returns(lambda: _admit(gate))
    event.remove(ledger.engine, "commit", freeze_before_commit)
    quiet_passes()
    [(first, held)] = _rows(ledger).items()  # the server committed it as it resumed
    assert held == (25 if share else 1) * UNIT
    if not share:  # ``ometer chat``: the call refused, the process ends
        gate.close()
        assert _rows(ledger) == {}
        ledger.dispose()
        return
    again = returns(lambda: _admit(gate))
    assert again is not None
    rows = _rows(ledger)  # given back before: one slice, 25 of 100, not 18.75 beside 25
    assert list(rows.values()) == [held] and first not in rows
    gate.settle(again)  # type: ignore[arg-type]
    gate.close()
    assert _rows(ledger) == {}
    ledger.dispose()


def test_a_lease_whose_give_back_failed_goes_back_with_the_next_transaction(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A call's hold given back while another process held the write lock past the wait (a
    long upkeep): the row stayed for its 15 minutes, counted as another process's hold, and a
    call that fitted the room left was refused meanwhile. Now it goes with the next write."""
    ledger = Ledger(sqlite_url, wait=0.2)
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=2 * UNIT, currency="USD")
    )
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.0, ttl=3600)
    first = _admit(gate)
    assert isinstance(first, Reservation)
    gate.ended(first, UNIT)
    ledger.record([make_span(id=first.id, started_at=NOV, cost_total=UNIT)])
    with _write_locked(sqlite_url), caplog.at_level("WARNING", "ollama_meter.budgets"):
        gate.settle(first)  # its row cannot go back now
    assert "could not give back 1 budget lease(s)" in caplog.text
    assert list(_rows(ledger).values()) == [UNIT]
    second = _admit(gate)  # spent 1 of 2: room for it, the stale row gone in its transaction
    assert isinstance(second, Reservation)
    assert list(_rows(ledger)) == list(second.rows)
    gate.settle(second)
    gate.close()
    assert _rows(ledger) == {}
    ledger.dispose()
