"""A budget counts its own currency only; what its scope spent in another is said, never added.

Prices switched currency mid-month (the USD budget removed, EUR rules and an EUR budget set
in its place): the new budget said 0 spent, and the department had its whole month's
allowance again, while ``budget status``, ``budget set``, the dashboard and ``/api/dash``
said nothing of the dollars it had already spent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import budget_status
from ollama_meter.ledger import Ledger
from ollama_meter.records import EACH_TENANT, Budget
from ollama_meter.reports import DashQuery, Links, dashboard_report, render_dashboard
from tests.factories import make_span

NOW = datetime(2026, 11, 20, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")


def _spend(ledger: Ledger) -> None:
    """acme/sales: 8 USD and 0.5 JPY, then 1.25 EUR; acme/ops 3 USD; globex/sales 2 USD.
    And 4 USD last month, which no November budget holds."""
    at = datetime(2026, 11, 3, tzinfo=UTC)
    ledger.record(
        [
            make_span(started_at=at, department="sales", cost_total=8_000_000, currency="USD"),
            make_span(started_at=at, department="sales", cost_total=500_000, currency="JPY"),
            make_span(started_at=NOW, department="sales", cost_total=1_250_000, currency="EUR"),
            make_span(started_at=at, department="ops", cost_total=3_000_000, currency="USD"),
            make_span(
                started_at=at, tenant="globex", department="sales", cost_total=2_000_000,
                currency="USD",
            ),
            make_span(
                started_at=datetime(2026, 10, 30, tzinfo=UTC), department="sales",
                cost_total=4_000_000, currency="USD",
            ),
        ]
    )  # fmt: skip


def test_what_a_budgets_scope_spent_in_other_currencies_is_said_apart(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url, zone="UTC")
    _spend(ledger)
    for budget in (
        Budget("acme", "sales", "month", 10_000_000, "EUR"),
        Budget("acme", None, "month", 50_000_000, "EUR"),
        Budget(EACH_TENANT, "sales", "month", 10_000_000, "EUR"),
        Budget("acme", "sales", "day", 10_000_000, "EUR"),  # the 20th: nothing else that day
    ):
        ledger.save_budget(budget)
    rows = budget_status(ledger, tz=UTC_ZONE, now=NOW)
    assert [(r.budget.scope(r.tenant), r.budget.period, r.spent, r.uncounted) for r in rows] == [
        ("acme/sales", "month", 1_250_000, (("JPY", 500_000), ("USD", 8_000_000))),
        ("acme", "month", 1_250_000, (("JPY", 500_000), ("USD", 11_000_000))),
        ("acme/sales", "month", 1_250_000, (("JPY", 500_000), ("USD", 8_000_000))),
        ("globex/sales", "month", 0, (("USD", 2_000_000),)),
        ("acme/sales", "day", 1_250_000, ()),
    ]
    assert rows[0].uncounted_note() == (
        "budget 1 (acme/sales) counts EUR only: 0.500000 JPY and 8.000000 USD spent in month "
        "2026-11 is not in its spent and not capped by it (amounts in two currencies are "
        "never added)"
    )
    assert rows[-1].uncounted_note() is None

    dash = dashboard_report(ledger, DashQuery(), tz=UTC_ZONE, now=NOW)
    gauges = {(b["scope"], b["period"]): b for b in dash.to_json()["budgets"]}
    assert gauges[("acme/sales", "month")]["spent"] == "1.250000"
    assert gauges[("acme/sales", "month")]["uncounted"] == {"JPY": "0.500000", "USD": "8.000000"}
    assert gauges[("acme/sales", "day")]["uncounted"] == {}
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
    assert page.count("not counted: amounts in two currencies are never added") == 7
    assert 'title="11.000000 USD">and 11.00 USD spent, not counted' in page
    assert 'title="0.500000 JPY">and 1 JPY spent, not counted' in page


@pytest.fixture
def switched(cli: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A ledger whose USD rule and budget were replaced by EUR ones on the 20th."""
    for name, value in (("OMETER_DB_URL", sqlite_url), ("OMETER_TIMEZONE", "UTC")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("ollama_meter.cli.budget.utc_now", lambda: NOW)
    assert cli("pricing", "set", "*", "--input-per-1m", "1000").code == 0
    assert cli("budget", "set", "sales", "--tenant", "acme", "--monthly", "10").code == 0
    ledger = Ledger(sqlite_url)
    _spend(ledger)
    ledger.dispose()
    assert cli("budget", "rm", "1").code == 0
    assert cli("pricing", "rm", "1").code == 0
    assert cli("pricing", "set", "*", "--input-per-1m", "1000", "--currency", "EUR").code == 0
    return cli


def test_budget_set_and_status_say_what_the_new_currencys_budget_cannot_count(
    switched: Any,
) -> None:
    done = switched(
        "budget", "set", "sales", "--tenant", "acme", "--monthly", "10", "--currency", "EUR"
    )
    assert done.code == 0, done.stderr
    note = (
        "budget 2 (acme/sales) counts EUR only: 0.500000 JPY and 8.000000 USD spent in month "
        "2026-11 is not in its spent and not capped by it (amounts in two currencies are "
        "never added)"
    )
    assert f"note: {note}" in " ".join(done.stderr.split())
    status = switched("budget", "status")
    assert status.code == 0, status.stderr
    assert note in " ".join(status.stdout.split())
    (row,) = json.loads(switched("budget", "status", "--json").stdout)
    assert (row["spent"], row["uncounted"]) == ("1.250000", {"JPY": "0.500000", "USD": "8.000000"})
    # a budget whose scope spent nothing else says nothing more
    quiet = switched(
        "budget", "set", "legal", "--tenant", "acme", "--monthly", "10", "--currency", "EUR"
    )
    assert quiet.code == 0 and "counts EUR only" not in quiet.stderr


_CALLS = st.lists(
    st.tuples(
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["sales", "ops"]),
        st.sampled_from(["EUR", "USD", "JPY"]),
        st.integers(0, 10**15),
        st.sampled_from(
            [datetime(2026, 10, 31, 23, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC), NOW]
        ),
    ),
    max_size=12,
)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    calls=_CALLS,
    tenant=st.sampled_from(["acme", EACH_TENANT]),
    department=st.sampled_from(["sales", None]),
)
def test_every_currency_a_scope_spent_is_counted_or_said_once(
    tmp_path_factory: pytest.TempPathFactory,
    calls: list[tuple[str, str, str, int, datetime]],
    tenant: str,
    department: str | None,
) -> None:
    """Per currency, what a budget's scope spent this month is its ``spent`` (its own currency)
    or in ``uncounted`` (any other), never both, never summed across currencies."""
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('oc') / 'l.db'}", zone="UTC")
    ledger.record(
        [
            make_span(
                started_at=at, tenant=t, department=d, cost_total=c, currency=cur, unpriced=False
            )
            for t, d, cur, c, at in calls
        ]
    )
    ledger.save_budget(Budget(tenant, department, "month", 10**18, "EUR"))
    for row in budget_status(ledger, tz=UTC_ZONE, now=NOW):
        per_currency: dict[str, int] = {}
        for t, d, cur, c, at in calls:
            if t == row.tenant and department in (None, d) and at.month == 11 and c:
                per_currency[cur] = per_currency.get(cur, 0) + c
        assert row.spent == per_currency.pop("EUR", 0)
        assert row.uncounted == tuple(sorted(per_currency.items()))
    ledger.dispose()
