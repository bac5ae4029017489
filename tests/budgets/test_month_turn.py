"""A call admitted in the last moment of a month, ending in the next: its started_at decides
the month, and the ledger, `budget status`, the gate's spend and chargeback all agree on it.
The new month's cap starts fresh, whatever leases the old month's calls still hold; its
alerts fire once, again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import Budget, BudgetGate, Estimate, budget_status
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.meter import Attribution
from ollama_meter.periods import local_midnight, next_month
from ollama_meter.records import new_span_row_id
from ollama_meter.reports import chargeback
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span, opened, token_prices
from tests.gateway.conftest import settle as settle_meter

LIMIT = 10_000_000
BOUND = 400_000
MOMENT = timedelta(milliseconds=100)
ZONES = [
    "Europe/Berlin", "Australia/Lord_Howe", "America/St_Johns", "Pacific/Chatham",
    "Asia/Kathmandu", "UTC", "America/Santiago",
]  # fmt: skip


def _reservations(ledger: Ledger) -> list[tuple[datetime, int]]:
    from sqlalchemy import select

    from ollama_meter.ledger.models import BUDGET_RESERVATIONS as R

    with ledger.read() as conn:
        rows = conn.execute(select(R.c.period_start, R.c.amount_micros)).all()
    return sorted((start.replace(tzinfo=UTC), amount) for start, amount in rows)


# Each zone with one of the three settings in turn (not every pair: 42 cases took 2.5 min).
@pytest.mark.parametrize(
    ("name", "share", "ttl"),
    [(zone, *[(0.0, 0), (0.25, 0), (0.25, 5)][i % 3]) for i, zone in enumerate(ZONES)],
)
def test_a_call_from_the_months_last_moment_is_the_old_months_everywhere(
    db_url: str, name: str, share: float, ttl: float
) -> None:
    """``ttl`` 5: refusals are remembered (a gateway's), November's must not refuse December's."""
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
    gate = BudgetGate(ledger, tz=zone, ttl=ttl, lease_share=share)

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
        for now, spent, held in ((late_at, LIMIT - BOUND, BOUND), (early_at, 0, LIMIT)):
            (status,) = budget_status(ledger, tz=zone, now=now)  # each month's lease, in it
            assert (status.spent, status.held) == (spent, held)
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


def test_a_metered_stream_from_the_months_last_moment_is_priced_counted_and_billed_in_it(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """Through the meter: a stream opened at 23:59:59.9 on 30 November in Berlin, ending in
    December, when a dearer price rule begins. Its bound, cost, month of spend, alerts and
    bill are November's; December's budget starts from nothing."""
    from tests.budgets.test_gate import BOUND, CALL_COST, HELLO, OUT, Clock, budget, make_meter

    berlin = ZoneInfo("Europe/Berlin")
    turn = local_midnight(datetime(2026, 12, 1).date(), berlin)
    clock = Clock(turn - MOMENT)
    meter = make_meter(db_url, clock, ollama_host=emulator.url)
    dearer = replace(
        token_prices("llama3.1:*", effective_from=datetime(2026, 12, 1).date()),
        input_per_1m=Decimal(3000),
        output_per_1m=Decimal(6000),
    )
    meter.ledger.add_price_rule(dearer)
    limit = 3 * BOUND  # December's bound, at its prices
    before = limit - BOUND  # spent in November: room for the late call's bound exactly
    saved = budget(meter, limit, thresholds=(80, 100))
    with opened(db_url) as seeding:  # priced by other rules: not the meter's, which reprice
        seeding.record([make_span(started_at=turn - timedelta(days=9), cost_total=before)])
    who = Attribution(tenant="acme", department="sales")

    def chat(stream: bool) -> Any:
        return meter.chat(
            model="llama3.1:8b", messages=HELLO, attribution=who, stream=stream,
            options={"num_predict": OUT},
        )  # fmt: skip

    run = chat(True)
    parts = iter(run)
    next(parts)  # admitted and sent in November
    clock.now = turn + MOMENT
    list(parts)  # it ends in December
    late = run.span
    assert (late.started_at, late.cost_total) == (turn - MOMENT, CALL_COST)
    early = chat(False)
    list(early)
    assert early.span.cost_total == 3 * CALL_COST  # December's prices
    settle_meter(meter)
    with pytest.raises(BudgetExceeded):  # November's room is spent to the last call's bound
        meter.budgets.admit(  # type: ignore[union-attr]
            call_id="x", tenant="acme", department="sales",
            estimate=Estimate(BOUND - CALL_COST + 1, "USD"), now=turn - MOMENT,
        )  # fmt: skip
    for now, spent in ((turn - MOMENT, before + CALL_COST), (turn + MOMENT, 3 * CALL_COST)):
        (status,) = budget_status(meter.ledger, tz=berlin, now=now)
        assert (status.budget.id, status.spent) == (saved.id, spent)
    for month, total in (("2026-11", before + CALL_COST), ("2026-12", 3 * CALL_COST)):
        bill = chargeback(
            meter.ledger, month, tz=berlin, now=turn + timedelta(days=40), currency="USD"
        )
        assert sum(int(r.usage_cost) for r in bill.rows) == total, month
    fired = sorted(
        (a.period_label, a.threshold) for a in meter.ledger.alerts() if a.kind != "refused"
    )
    assert fired == [
        (month, t)
        for month, spent in (("2026-11", before + CALL_COST), ("2026-12", 3 * CALL_COST))
        for t in (80, 100)
        if spent * 100 >= t * limit
    ]
    assert ("2026-11", 80) in fired  # the late call's cost crossed it, and in November
    meter.close_upstream()
