"""An alert fires once per budget, tenant, period and threshold, also when ``ometer db rollup
--zone`` moved the ledger's midnights in the middle of the period: November in Berlin is
November in UTC, an hour sooner. The alert's row was known by its period's first instant, so
the first call (or gateway start) after the move claimed every threshold the period had
reached again, under the new zone's first instant: each said twice to the log, the webhook
and by email, for this period and the one before."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import BudgetGate
from ollama_meter.ledger import Ledger
from ollama_meter.records import Budget
from tests.factories import make_span

UNIT = 1_000_000
AT = datetime(2026, 11, 11, 12, tzinfo=UTC)
"""Noon on a Wednesday in the middle of a month: one day, week and month in each zone."""


def _gate(ledger: Ledger, zone: str) -> BudgetGate:
    return BudgetGate(ledger, tz=ZoneInfo(zone), lease_share=0.25, ttl=3600, clock=lambda: 0.0)


@pytest.mark.parametrize("period", ["day", "week", "month"])
@pytest.mark.parametrize(
    "zones",
    [("UTC", "Europe/Berlin"), ("Europe/Berlin", "America/Los_Angeles"), ("UTC", "Asia/Kolkata")],
)
def test_a_threshold_said_before_the_zone_moved_is_not_said_again(
    db_url: str, period: str, zones: tuple[str, str]
) -> None:
    ledger = Ledger(db_url)
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period=period, limit=10 * UNIT, currency="USD")
    )
    ledger.record(
        [make_span(tenant="acme", department="sales", started_at=AT, cost_total=8 * UNIT)]
    )
    before, after = (_gate(ledger, zone) for zone in zones)
    (said,) = before.check_alerts("acme", "sales", AT)
    assert said.threshold == 75
    assert after.check_alerts("acme", "sales", AT) == []  # the call after the move
    assert after.sweep_alerts(AT) == []  # a gateway starting after it
    assert [(a.threshold, a.period_label) for a in ledger.alerts()] == [(75, said.period_label)]
    ledger.record([make_span(tenant="acme", department="sales", started_at=AT, cost_total=UNIT)])
    (crossed,) = after.check_alerts("acme", "sales", AT)  # a threshold not said yet still is
    assert (crossed.threshold, crossed.period_label) == (90, said.period_label)
    for gate in (before, after):
        gate.close(give_back=False)
    ledger.dispose()
