"""``budget status`` shows each budget as the gate counts it, whatever its scope."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import budget_status
from ollama_meter.ledger import Ledger
from ollama_meter.periods import current_period
from ollama_meter.records import EACH_TENANT, Budget, LeaseKey
from ollama_meter.reports import DashQuery, dashboard_report
from tests.factories import make_span
from tests.ledger.test_sparse_buckets import statements

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


_budgets = st.lists(
    st.tuples(
        st.sampled_from(["acme", "globex", EACH_TENANT]),
        st.sampled_from([None, "sales", "ops"]),
        st.sampled_from(["day", "week", "month"]),
    ),
    min_size=1,
    max_size=10,
    unique=True,
)
CALLS = [
    make_span(
        started_at=NOW - timedelta(hours=7 * n + 1),
        tenant=["acme", "globex"][n % 2],
        department=["sales", "ops", "legal"][n % 3],
        currency=["USD", "USD", "EUR"][n % 5 % 3],
        cost_total=1_000 * n + 1,
    )
    for n in range(120)  # the 35 days before NOW
]


@pytest.fixture
def spent_ledger(db_url: str) -> Ledger:
    ledger = Ledger(db_url)
    ledger.record(CALLS)
    return ledger


_leases = st.lists(
    st.tuples(st.integers(0, 9), st.sampled_from(["acme", "globex"]), st.integers(1, 10**6)),
    max_size=8,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scopes=_budgets, leases=_leases)
def test_each_budgets_spend_and_holds_are_its_scopes_in_statements_that_do_not_grow_with_them(
    spent_ledger: Ledger,
    scopes: list[tuple[str, str | None, str]],
    leases: list[tuple[int, str, int]],
) -> None:
    """Each budget's spent, uncounted spend and holds are its scope's, summed from the spans
    and leases themselves. The holds were read one budget and tenant at a time (1,000
    budgets: 1,000 statements) and each budget looked through every department's spend."""
    tz, ledger, spans = ZoneInfo("UTC"), spent_ledger, CALLS
    with ledger.budget_transaction() as store:  # this example's budgets and leases alone
        store._conn.exec_driver_sql("DELETE FROM budget_reservations")
        store._conn.exec_driver_sql("DELETE FROM budgets")
    budgets = [ledger.save_budget(Budget(t, d, p, 10**12, "USD")) for t, d, p in scopes]
    held: Counter[tuple[int, str]] = Counter()
    with ledger.budget_transaction() as store:
        for n, (index, tenant, amount) in enumerate(leases):
            budget = budgets[index % len(budgets)]
            start = current_period(budget.period, tz=tz, now=NOW).start
            assert budget.id is not None
            # Live by either clock: NOW's (SQLite's, the caller's) and PostgreSQL's own.
            until = max(NOW, datetime.now(UTC)) + timedelta(days=1)
            store.put_lease(f"lease-{n}", LeaseKey(budget.id, tenant, start), amount, until)
            held[(budget.id, tenant)] += amount
    stored = ledger.budgets()
    one_a_period = list({b.period: b for b in stored}.values())
    with statements(ledger) as few:
        budget_status(ledger, tz=tz, now=NOW, budgets=one_a_period)
    with statements(ledger) as run:
        rows = budget_status(ledger, tz=tz, now=NOW, budgets=stored)
    assert len(run) == len(few), run
    for row in rows:
        window = current_period(row.budget.period, tz=tz, now=NOW)
        mine = [
            s
            for s in spans
            if s.tenant == row.tenant
            and row.budget.department in (None, s.department)
            and window.start <= s.started_at < window.end
        ]
        assert row.spent == sum(s.cost_total for s in mine if s.currency == "USD")
        other = sum(s.cost_total for s in mine if s.currency == "EUR")
        assert dict(row.uncounted) == ({"EUR": other} if other else {})
        assert row.held == held[(row.budget.id, row.tenant)], row
