"""The dashboard over a budget row edited by hand in SQL: that one gauge says what to fix.

One budget row the ledger cannot read (a limit of 0 or -5, currency ``'XX'``, period
``'hourly'``) made ``/dashboard`` and ``/api/dash`` answer 503 naming it: no spend, no
chart, no other budget. Now the rest of the dashboard is drawn, that budget's gauge says
what is wrong and what to do (the 503's words), and ``/api/dash`` lists it in ``warnings``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from ollama_meter.budgets import Budget
from ollama_meter.errors import LedgerError
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "edit",
    [
        "limit_micros = 0",
        "limit_micros = -5",
        "currency = 'XX'",
        "period = 'hourly'",
        "thresholds = '0,abc'",
    ],
)
def test_one_unreadable_budget_row_is_its_own_gauge_not_a_503(
    app: Callable[..., Gateway], emulator: OllamaEmulator, db_url: str, edit: str
) -> None:
    gw = app(emulator.url, clock=lambda: NOW)
    gw.ledger.save_budget(Budget("acme", "sales", "month", 5_000_000, "USD"))
    gw.ledger.save_budget(Budget("globex", "hr", "month", 7_000_000, "USD"))
    gw.ledger.save_budget(Budget("acme", None, "month", 9_000_000, "USD"))
    gw.ledger.record(
        [make_span(started_at=NOW, department="sales", cost_total=1_250_000, unpriced=False)]
    )
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE budgets SET {edit} WHERE tenant = 'globex'")
    engine.dispose()
    with pytest.raises(LedgerError) as caught:
        gw.ledger.budgets()  # what the 503 said
    said = str(caught.value)
    assert said.startswith("budget 2 in the ledger cannot be read: "), said
    assert said.endswith("; fix the row in SQL, or remove it with `ometer budget rm 2`"), said

    reply = gw.client.get("/api/dash")
    assert reply.status_code == 200, reply.text
    data = reply.json()
    # the rest of the dashboard: the spend, and every other budget's gauge
    assert [(s["currency"], s["cost"]) for s in data["spend"]] == [("USD", "1.250000")]
    assert [(b["id"], b["scope"], b["spent"]) for b in data["budgets"]] == [
        (1, "acme/sales", "1.250000"),
        (3, "acme", "1.250000"),
    ]
    assert data["warnings"] == [said]

    page = gw.client.get("/dashboard")
    assert page.status_code == 200, page.text
    (gauge,) = re.findall(
        r'<div class="gauge [^"]*" role="note" [^>]*data-scope="([^"]*)" data-state="unreadable">'
        r'\s*<div class="gauge-head">.*?</div>\s*<div class="gauge-note">([^<]*)</div>',
        page.text,
    )
    assert (gauge[0], html.unescape(gauge[1])) == ("globex/hr", said)
    assert 'data-scope="acme/sales"' in page.text and 'data-scope="acme"' in page.text

    # A view of acme only, or of a key scoped to acme/sales, has no globex gauge to explain.
    only_acme = gw.client.get("/api/dash?tenant=acme").json()
    assert said not in only_acme["warnings"]
    assert 'data-state="unreadable"' not in gw.client.get("/dashboard?tenant=acme").text


def test_each_view_warns_of_the_unreadable_budgets_it_would_show(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Several rows broken at once are each a warning; a key sees those of its own scope
    only (a ``*`` budget of its department is one), as it sees only its own budgets."""
    gw = app_on(emulator.url, sqlite_url, clock=lambda: NOW)
    keyed = app_on(emulator.url, sqlite_url, require_key=True, clock=lambda: NOW)
    for tenant, department in [("acme", "sales"), ("globex", "hr"), ("*", "sales"), ("acme", None)]:
        gw.ledger.save_budget(Budget(tenant, department, "month", 5_000_000, "USD"))
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE budgets SET limit_micros = 0 WHERE id IN (2, 3)")
    engine.dispose()
    why = "a budget's limit must be more than 0 and at most 1,000,000,000,000"
    warned = {
        n: f"budget {n} in the ledger cannot be read: {why}; fix the row in SQL, or remove it "
        f"with `ometer budget rm {n}`"
        for n in (2, 3)
    }
    key = gw.ledger.create_key(name="k", tenant="acme", department="sales")[1]
    seen = {
        "admin": gw.client.get("/api/dash").json(),
        "acme/sales": keyed.client.get(
            "/api/dash", headers={"Authorization": f"Bearer {key}"}
        ).json(),
    }
    assert seen["admin"]["warnings"] == [warned[2], warned[3]]
    assert [b["scope"] for b in seen["admin"]["budgets"]] == ["acme/sales", "acme"]
    assert seen["acme/sales"]["warnings"] == [warned[3]]
    assert [b["scope"] for b in seen["acme/sales"]["budgets"]] == ["acme/sales"]
