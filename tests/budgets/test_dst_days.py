"""Daily, weekly and monthly hard budgets over days the clock jumps: a 23- or 25-hour day
(Berlin), a 23.5- or 24.5-hour one (Lord Howe's half-hour shift), a clock turned back across
midnight (St John's at 00:01 until 2011), or at it (Cairo, Beirut and Santiago go from 24:00
back to 23:00 today), a midnight skipped (Havana, Cairo, Santiago from 00:00 to 01:00). A period's spend is what
started from its first midnight to the next period's, the gate and `budget status` say the
same, and a refusal's Retry-After is the next period's start exactly."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import Budget, BudgetGate, Estimate, budget_status
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.periods import day_of, local_midnight, next_month
from ollama_meter.records import new_span_row_id
from tests.factories import make_span

LIMIT = 10_000_000
DAYS = {
    "Europe/Berlin": [date(2026, 3, 29), date(2026, 10, 25)],
    "Australia/Lord_Howe": [date(2026, 4, 5), date(2026, 10, 4)],
    "America/St_Johns": [date(2026, 3, 8), date(2010, 11, 7), date(2010, 11, 6)],
    "Pacific/Chatham": [date(2026, 4, 5), date(2026, 9, 27)],
    # midnight skipped (00:00 -> 01:00), and the clock turned back from 24:00 to 23:00
    "Africa/Cairo": [date(2026, 4, 24), date(2026, 10, 29), date(2026, 10, 30)],
    "America/Santiago": [date(2026, 4, 4), date(2026, 4, 5), date(2026, 9, 6)],
    "Asia/Beirut": [date(2026, 3, 29), date(2026, 10, 24), date(2026, 10, 25)],
    "America/Havana": [date(2026, 3, 8), date(2026, 11, 1)],
}
US = timedelta(microseconds=1)
_tenants = (f"t{n}" for n in range(10**9))


def _period(unit: str, day: date) -> tuple[date, date]:
    """The first day of ``unit`` holding ``day``, and the first day after it."""
    if unit == "day":
        return day, day + timedelta(days=1)
    if unit == "week":
        first = day - timedelta(days=day.weekday())
        return first, first + timedelta(days=7)
    return day.replace(day=1), next_month(day)


Case = tuple[ZoneInfo, str, date, list[tuple[datetime, int]], datetime]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    name, unit = (
        draw(st.sampled_from(sorted(DAYS))),
        draw(st.sampled_from(["day", "week", "month"])),
    )
    zone, jump = ZoneInfo(name), draw(st.sampled_from(DAYS[name]))
    first, after = _period(unit, jump)
    start, end = local_midnight(first, zone), local_midnight(after, zone)
    length = (end - start) // US
    edges = [start - US, start, end - US, end]
    moments = st.one_of(
        st.sampled_from(edges),
        st.integers(-3_600 * 10**6, length + 3_600 * 10**6).map(lambda us: start + us * US),
    )
    spans = draw(st.lists(st.tuples(moments, st.integers(0, LIMIT // 9)), max_size=8))
    jumped = (local_midnight(jump, zone) - start) // US  # the jump's day, in a week or month
    stops = [0, length - 1, jumped, *range(0, length, length // 7)]
    now = start + draw(st.sampled_from(stops)) * US
    return zone, unit, jump, spans, now


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_a_budget_over_a_day_the_clock_jumps(db_url: str, case: Case) -> None:
    zone, unit, jump, spans, now = case
    tenant = next(_tenants)
    ledger = Ledger(db_url)
    budget = Budget(tenant=tenant, department="sales", period=unit, limit=LIMIT, currency="USD")
    ledger.save_budget(budget)
    ledger.record([make_span(started_at=at, tenant=tenant, cost_total=cost) for at, cost in spans])
    first, after = _period(unit, jump)
    start, end = local_midnight(first, zone), local_midnight(after, zone)
    assert first <= day_of(now, zone) < after
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
