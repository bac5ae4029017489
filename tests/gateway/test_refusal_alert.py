"""A gateway's 429s from a hard budget tell the admin once: a ``refused`` alert on the webhook.

The budget had 7.654321 of 10 USD spent; each call asks for a reply cap that may cost 200 USD,
so every one is refused (429), well below 100 %: the alert says a refusal at 76 % (past the
75 % threshold, which fires too), not a budget used up.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from ollama_meter.budgets import Budget
from ollama_meter.testing import OllamaEmulator
from tests.budgets.test_gate import Receiver, receiver  # noqa: F401 (a fixture)
from tests.factories import make_span, token_prices
from tests.gateway.conftest import Gateway

ASK = {
    "model": "llama3.1:8b",
    "messages": [{"role": "user", "content": "hi"}],
    "options": {"num_predict": 100_000},  # may cost up to 200.042 USD
}
WHO = {"x-ometer-tenant": "acme", "x-ometer-department": "sales"}


def test_a_gateway_refusing_calls_posts_one_refusal_alert(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    receiver: Receiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMETER_ALERT_WEBHOOK_URL", receiver.url)
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    now = datetime.now(UTC)
    spent = make_span(
        started_at=now, tenant="acme", department="sales",
        cost_total=7_654_321, cost_tokens=7_654_321, unpriced=False,
    )  # fmt: skip
    gw.ledger.record([spent])
    budget = gw.ledger.save_budget(Budget("acme", "sales", "month", 10_000_000, "USD"))
    for _ in range(3):
        reply = gw.client.post("/api/chat", json=ASK, headers=WHO)
        assert reply.status_code == 429, reply.text
        assert "refuses the call: spent 7.654321 of 10.000000 USD" in reply.json()["error"]
    assert gw.meter.budgets is not None and gw.meter.budgets.alerts is not None
    assert gw.meter.budgets.alerts.flush(600.0)
    alerts = [(a.kind, a.threshold, a.spent, a.call_bound) for a in gw.ledger.alerts()]
    assert alerts == [
        ("threshold", 75, 7_654_321, None),
        ("refused", 75, 7_654_321, 200_042_000),
    ]
    assert [(p["kind"], p["threshold"]) for p in receiver.posts] == [
        ("threshold", 75),
        ("refused", 75),
    ]
    refused = receiver.posts[1]
    assert refused["budget_id"] == budget.id and refused["department"] == "sales"
    assert (refused["spent"], refused["limit"], refused["left"], refused["call_bound"]) == (
        "7.654321",
        "10.000000",
        "2.345679",
        "200.042000",
    )
    assert "refused a call: spent 7.654321 of 10.000000 USD (76% used)" in refused["text"]
    # The dashboard says the budget refuses calls, not only that 75 % is passed (warning).
    [gauge] = gw.client.get("/api/dash").json()["budgets"]
    assert (gauge["spent"], gauge["state"]) == ("7.654321", "refusing")
    page = gw.client.get("/dashboard").text
    assert 'data-scope="acme/sales" data-state="refusing"' in page
    assert "refusing calls that may cost more than is left" in page
