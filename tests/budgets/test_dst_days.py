"""Daily hard budgets on days the clock jumps: a 23- or 25-hour day (Berlin), a 23.5- or
24.5-hour one (Lord Howe's half-hour shift), a clock turned back at 00:01 (St John's until
2011). The day's spend is what started between its midnights, the gate and `budget status`
say the same, and a refusal's Retry-After is the next midnight exactly."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import Budget, BudgetGate, Estimate, budget_status
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.periods import day_of, local_midnight
from ollama_meter.records import new_span_row_id
from tests.factories import make_span

LIMIT = 10_000_000
DAYS = {
    "Europe/Berlin": [date(2026, 3, 29), date(2026, 10, 25)],
    "Australia/Lord_Howe": [date(2026, 4, 5), date(2026, 10, 4)],
    "America/St_Johns": [date(2026, 3, 8), date(2010, 11, 7), date(2010, 11, 6)],
    "Pacific/Chatham": [date(2026, 4, 5), date(2026, 9, 27)],
}
US = timedelta(microseconds=1)
_tenants = (f"t{n}" for n in range(10**9))


@st.composite
def cases(draw: st.DrawFn) -> tuple[ZoneInfo, date, list[tuple[datetime, int]], datetime]:
    name = draw(st.sampled_from(sorted(DAYS)))
    zone, day = ZoneInfo(name), draw(st.sampled_from(DAYS[name]))
    start = local_midnight(day, zone)
    end = local_midnight(day + timedelta(days=1), zone)
    length = (end - start) // US
    edges = [start - US, start, end - US, end]
    moments = st.one_of(
        st.sampled_from(edges),
        st.integers(-3_600 * 10**6, length + 3_600 * 10**6).map(lambda us: start + us * US),
    )
    spans = draw(st.lists(st.tuples(moments, st.integers(0, LIMIT // 9)), max_size=8))
    now = start + draw(st.sampled_from([0, length - 1, *range(0, length, length // 7)])) * US
    return zone, day, spans, now


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_a_daily_budget_on_a_day_the_clock_jumps(
    db_url: str, case: tuple[ZoneInfo, date, list[tuple[datetime, int]], datetime]
) -> None:
    zone, day, spans, now = case
    tenant = next(_tenants)
    ledger = Ledger(db_url)
    budget = Budget(tenant=tenant, department="sales", period="day", limit=LIMIT, currency="USD")
    ledger.save_budget(budget)
    ledger.record([make_span(started_at=at, tenant=tenant, cost_total=cost) for at, cost in spans])
    start, end = local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)
    assert day_of(now, zone) == day
    spent = sum(cost for at, cost in spans if start <= at < end)
    gate = BudgetGate(ledger, tz=zone, ttl=0)

    def admit(amount: int) -> object:
        return gate.admit(
            call_id=new_span_row_id(),
            tenant=tenant,
            department="sales",
            estimate=Estimate(amount, "USD"),
            now=now,
        )

    try:
        with pytest.raises(BudgetExceeded) as refused:
            admit(LIMIT - spent + 1)
        assert refused.value.retry_after == -((now - end) // timedelta(seconds=1))
        call = admit(LIMIT - spent)
        assert call is not None
        gate.settle(call, recorded=False)
    finally:
        gate.close()
    statuses = [s for s in budget_status(ledger, tz=zone, now=now) if s.tenant == tenant]
    assert [(s.spent, s.window.start, s.window.end) for s in statuses] == [(spent, start, end)]
    ledger.dispose()
