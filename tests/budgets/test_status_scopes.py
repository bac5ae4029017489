"""``budget status`` shows each budget as the gate counts it, whatever its scope."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from ollama_meter.budgets import budget_status
from ollama_meter.ledger import Ledger
from ollama_meter.records import EACH_TENANT, Budget
from ollama_meter.reports import DashQuery, dashboard_report
from tests.factories import make_span

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def test_a_whole_tenant_budget_for_each_tenant_shows_each_tenants_spend(sqlite_url: str) -> None:
    """A budget for every tenant with no department (the Python API's to make) caps each
    tenant's whole spend, and the gate counts it so; status looked for tenants who spent in
    the department ``None``, found none, and showed one row ``*`` at 0, ``ok``, while acme was
    past its limit and refused."""
    ledger = Ledger(sqlite_url)
    at = datetime(2026, 11, 10, tzinfo=UTC)
    ledger.record(
        [
            make_span(started_at=at, tenant="acme", department="sales", cost_total=1_500_000),
            make_span(started_at=at, tenant="acme", department="ops", cost_total=700_000),
            make_span(started_at=at, tenant="globex", department="ops", cost_total=300_000),
        ]
    )
    ledger.save_budget(Budget(EACH_TENANT, None, "month", 2_000_000, "USD"))
    rows = budget_status(ledger, tz=ZoneInfo("UTC"), now=NOW)
    assert [(s.tenant, s.spent, s.state) for s in rows] == [
        ("acme", 2_200_000, "exhausted"),
        ("globex", 300_000, "ok"),
    ]
    gauges = dashboard_report(ledger, DashQuery(), tz=ZoneInfo("UTC"), now=NOW).to_json()
    assert [(b["scope"], b["spent"], b["state"]) for b in gauges["budgets"]] == [
        ("acme", "2.200000", "exhausted"),
        ("globex", "0.300000", "ok"),
    ]
