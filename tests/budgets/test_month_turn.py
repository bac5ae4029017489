"""A call admitted in the last moment of a month, ending in the next: its started_at decides
the month, and the ledger, `budget status`, the gate's spend and chargeback all agree on it.
The new month's cap starts fresh, whatever leases the old month's calls still hold; its
alerts fire once, again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import Budget, BudgetGate, Estimate, budget_status
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.periods import local_midnight, next_month
from ollama_meter.records import new_span_row_id
from ollama_meter.reports import chargeback
from tests.factories import make_span

LIMIT = 10_000_000
BOUND = 400_000
MOMENT = timedelta(milliseconds=100)
ZONES = ["Europe/Berlin", "Australia/Lord_Howe", "America/St_Johns", "Pacific/Chatham"]


def _reservations(ledger: Ledger) -> list[tuple[datetime, int]]:
    from sqlalchemy import select

    from ollama_meter.ledger.models import BUDGET_RESERVATIONS as R

    with ledger.read() as conn:
        rows = conn.execute(select(R.c.period_start, R.c.amount_micros)).all()
    return sorted((start.replace(tzinfo=UTC), amount) for start, amount in rows)


@pytest.mark.parametrize("share", [0.0, 0.25])
@pytest.mark.parametrize("name", ZONES)
def test_a_call_from_the_months_last_moment_is_the_old_months_everywhere(
    db_url: str, name: str, share: float
) -> None:
    zone = ZoneInfo(name)
    ledger = Ledger(db_url)
    budget = ledger.save_budget(
        Budget(
            tenant="acme", department="sales", period="month", limit=LIMIT, currency="USD",
            thresholds=(80, 100),
        )
    )  # fmt: skip
    first_nov, first_dec = datetime(2026, 11, 1).date(), datetime(2026, 12, 1).date()
    turn = local_midnight(first_dec, zone)
    nov_start = local_midnight(first_nov, zone)
    ledger.record([make_span(started_at=nov_start + timedelta(days=3), cost_total=LIMIT - BOUND)])
    gate = BudgetGate(ledger, tz=zone, ttl=0, lease_share=share)

    def admit(amount: int, now: datetime) -> Reservation:
        call = new_span_row_id(int(now.timestamp() * 1e9))
        got = gate.admit(
            call_id=call,
            tenant="acme",
            department="sales",
            estimate=Estimate(amount, "USD"),
            now=now,
        )
        assert got is not None
        return got

    def done(call: Reservation, cost: int, started: datetime) -> None:
        gate.ended(call, cost)
        ledger.record([make_span(id=call.id, started_at=started, cost_total=cost)])
        gate.settle(call)
        gate.check_alerts("acme", "sales", started, cost)

    try:
        late_at, early_at = turn - MOMENT, turn + MOMENT
        late = admit(BOUND, late_at)  # the last of November's room, exactly
        with pytest.raises(BudgetExceeded):
            admit(1, late_at)
        early = admit(LIMIT, early_at)  # December's whole limit: the late call is not in it
        with pytest.raises(BudgetExceeded):
            admit(1, early_at)
        done(late, BOUND, late_at)  # it ends in December
        assert [a.period_label for a in ledger.alerts()] == ["2026-11", "2026-11"]
        done(early, LIMIT * 80 // 100, early_at)
        with pytest.raises(BudgetExceeded):  # December's room: what the early call left
            admit(LIMIT * 20 // 100 + 1, early_at + MOMENT)
        next_call = admit(LIMIT * 20 // 100, early_at + MOMENT)
        done(next_call, 0, early_at + MOMENT)
    finally:
        gate.close()
    alerts = sorted((a.period_label, a.kind, a.threshold, a.spent) for a in ledger.alerts())
    assert alerts == [
        ("2026-11", "threshold", 80, LIMIT - BOUND),  # read as the call at 1 was refused
        ("2026-11", "threshold", 100, LIMIT),
        ("2026-12", "refused", 80, LIMIT * 80 // 100),
        ("2026-12", "threshold", 80, LIMIT * 80 // 100),
    ]
    assert _reservations(ledger) == []  # every lease went back, in its own month
    for now, spent in ((late_at, LIMIT), (early_at + timedelta(hours=1), LIMIT * 80 // 100)):
        (status,) = budget_status(ledger, tz=zone, now=now)
        assert (status.budget.id, status.spent, status.held) == (budget.id, spent, 0)
    for month, total in (("2026-11", LIMIT), ("2026-12", LIMIT * 80 // 100)):
        bill = chargeback(
            ledger, month, tz=zone, now=local_midnight(next_month(first_dec), zone),
            currency="USD",
        )  # fmt: skip
        assert sum(int(r.usage_cost) for r in bill.rows) == total, month
    ledger.dispose()
