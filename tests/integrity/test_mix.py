"""Upkeep, writers and kills mixed on one ledger: the rollups stay what a rebuild from the raw
spans gives, and every answered call is one span."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, prune, rebuild
from ollama_meter.ledger._cells import DAY_US
from ollama_meter.ledger._timings import busy_union
from tests.factories import make_span
from tests.ledger.test_rollups import _wipe
from tests.ledger.test_transfer import _tables

NOW = datetime(2026, 11, 20, 15, tzinfo=UTC)
SECOND_NS = 10**9


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    return Ledger(db_url)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    zone=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kathmandu"]),
    keep_days=st.integers(1, 4),
    calls=st.lists(
        st.tuples(st.integers(-400, 400), st.integers(1, 3_600), st.integers(1, 3_600)),
        min_size=1,
        max_size=12,
    ),
)
def test_a_rebuild_after_a_prune_keeps_the_busy_time_calls_spent_past_the_horizon(
    ledger: Ledger,
    zone: str,
    keep_days: int,
    calls: list[tuple[int, int, int]],
) -> None:
    """A call that began before the prune horizon (midnight) and was busy after it counts its
    busy time in the horizon's day. The prune removed its raw span, so ``ometer db rollup``
    redid that day without it: the day's and month's utilisation (chargeback's idle share)
    dropped by that time, and rollups no longer equalled a rebuild."""
    _wipe(ledger)
    assert ledger.adopt_zone(zone)
    local = NOW.astimezone(ZoneInfo(zone))
    horizon = local.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=keep_days)
    ledger.record(
        [
            make_span(
                started_at=horizon + timedelta(seconds=offset),
                ended_at=horizon + timedelta(seconds=offset + length),
                prompt_eval_duration_ns=0,
                eval_duration_ns=busy * SECOND_NS,
            )
            for offset, length, busy in calls
        ]
    )
    assert prune(ledger, keep_days, now=NOW).cutoff == horizon
    kept = _tables(ledger)
    day = (horizon, horizon + timedelta(microseconds=DAY_US))
    with ledger.read() as conn:
        busy = busy_union(conn, *day)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    with ledger.read() as conn:
        assert busy_union(conn, *day) == busy


def test_gateways_in_two_time_zones_hold_one_budget_between_them(db_url: str) -> None:
    """Each gateway cut a budget's month at its own OMETER_TIMEZONE's midnight, and a lease is
    kept per period start: a Berlin gateway's calls in flight were invisible to a Los Angeles
    gateway on the same ledger, and together they admitted twice the hard limit. A budget is
    the ledger's: its periods begin at the ledger's midnights, whichever gateway asks."""
    from ollama_meter.budgets import BudgetGate, Estimate
    from ollama_meter.config import load_settings
    from ollama_meter.errors import BudgetExceeded
    from ollama_meter.meter._wiring import budget_gate
    from ollama_meter.records import Budget

    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10_000_000, currency="USD")
    )
    berlin, los_angeles = (
        budget_gate(ledger, load_settings(db_url=db_url, timezone=zone))
        for zone in ("Europe/Berlin", "America/Los_Angeles")
    )

    def admit(gate: BudgetGate, call: str) -> object:
        estimate = Estimate(6_000_000, "USD")
        return gate.admit(
            call_id=call, tenant="acme", department="sales", estimate=estimate, now=NOW
        )

    held = admit(berlin, "a")
    with pytest.raises(BudgetExceeded, match="calls in flight hold 6.000000"):
        admit(los_angeles, "b")
    berlin.settle(held)


def test_gateways_in_two_time_zones_price_a_call_by_one_rule(db_url: str) -> None:
    """A rule's first day begins at the ledger's midnight, whichever gateway prices the call:
    at each gateway's own OMETER_TIMEZONE, an Auckland gateway priced a call at 12:00 UTC on
    30 November by December's rule and a Berlin one by November's."""
    from dataclasses import replace
    from datetime import UTC, date, datetime
    from decimal import Decimal

    from ollama_meter.config import load_settings
    from ollama_meter.meter import PriceSource
    from tests.factories import token_prices

    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.add_price_rule(replace(token_prices(), effective_until=date(2026, 12, 1)))
    ledger.add_price_rule(
        replace(token_prices(), input_per_1m=Decimal(5000), effective_from=date(2026, 12, 1))
    )
    call = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # 1 December already in Auckland
    chosen = {
        zone: PriceSource(ledger, settings=load_settings(db_url=db_url, timezone=zone))().rule_for(
            "llama3.1:8b", call
        )
        for zone in ("Europe/Berlin", "Pacific/Auckland")
    }
    assert {rule.effective_until for rule in chosen.values() if rule} == {date(2026, 12, 1)}
    assert all(chosen.values())
