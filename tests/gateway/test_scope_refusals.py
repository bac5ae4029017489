"""With keys required, a hard budget's refusal tells a key no other department's spend.

A tenant-wide budget (``acme``, no department) counts every department of the tenant; its
refusal said ``spent 7.654321 of 10.000000 USD``, and a key of one department could ask for it
at will (a reply cap too large for what is left), reading what the tenant's other departments
spent, which the dashboard keeps from it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.budgets._leases import Lease
from ollama_meter.budgets._refusals import refusal
from ollama_meter.periods import current_period
from ollama_meter.records import format_micros
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span, token_prices
from tests.gateway.conftest import Gateway

ASK = {
    "model": "llama3.1:8b",
    "messages": [{"role": "user", "content": "hi"}],
    "options": {"num_predict": 100_000},  # may cost up to 200 USD: more than any budget has
}


def _refusal(gw: Gateway, budget: Budget, key: str) -> str:
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.record(
        [
            make_span(
                started_at=datetime.now(UTC), tenant="acme", department="support",
                cost_total=7_654_321, cost_tokens=7_654_321, unpriced=False,
            )
        ]
    )  # fmt: skip
    gw.ledger.save_budget(budget)
    reply = gw.client.post("/api/chat", json=ASK, headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 429, reply.text
    assert int(reply.headers["retry-after"]) > 0
    message: str = reply.json()["error"]
    return message


@pytest.mark.parametrize("tenant", ["acme", "*"])
def test_a_tenant_wide_budget_refuses_a_key_without_the_other_departments_spend(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, tenant: str
) -> None:
    gw = app_on(emulator.url, sqlite_url, require_key=True)
    _, key = gw.ledger.create_key(name="k", tenant="acme", department="sales")
    message = _refusal(gw, Budget(tenant, None, "month", 10_000_000, "USD"), key)
    assert "7.654321" not in message and "10.000000" not in message, message
    assert "hard budget 1 for acme" in message and "has no room for the call" in message
    assert "this call may cost up to 200.042000" in message
    assert "set a smaller reply cap" in message and "the next period starts" in message


def test_a_departments_own_budget_still_says_what_it_spent(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url, require_key=True)
    _, key = gw.ledger.create_key(name="k", tenant="acme", department="support")
    message = _refusal(gw, Budget("acme", "support", "month", 10_000_000, "USD"), key)
    assert "spent 7.654321 of 10.000000 USD" in message, message


def test_without_keys_required_a_refusal_says_the_tenants_spend(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Any caller names its own department there (headers), and reads the dashboard."""
    gw = app_on(emulator.url, sqlite_url)
    _, key = gw.ledger.create_key(name="k", tenant="acme", department="sales")
    message = _refusal(gw, Budget("acme", None, "month", 10_000_000, "USD"), key)
    assert "spent 7.654321 of 10.000000 USD" in message, message


@given(
    spent=st.integers(0, 10**12),
    held=st.integers(0, 10**12),
    need=st.integers(0, 10**12),
    limit=st.integers(1, 10**12),
    tenant=st.sampled_from(["acme", "*"]),
    department=st.sampled_from([None, "sales"]),
)
def test_a_refusal_as_one_department_reads_it_names_no_figure_of_a_wider_budget(
    spent: int, held: int, need: int, limit: int, tenant: str, department: str | None
) -> None:
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    budget = Budget(tenant, department, "month", limit, "USD", id=4)
    window = current_period("month", tz=ZoneInfo("UTC"), now=now)
    refused = refusal(Lease(budget, "acme", window), spent, held, need, now, ZoneInfo("UTC"))
    full = str(refused)
    assert f"spent {format_micros(spent)} of {format_micros(limit)} USD" in full
    if department is not None:  # the department's own budget: its own spend
        assert refused.narrow == full
        return
    figures = [format_micros(spent), format_micros(limit)] + ([format_micros(held)] if held else [])
    rest = refused.narrow.replace(format_micros(need), "")  # the call's own bound is the caller's
    assert not [figure for figure in figures if figure in rest], refused.narrow
    assert refused.narrow.startswith(f"hard budget 4 for acme (monthly {window.label}) has no room")
    assert (f"this call may cost up to {format_micros(need)}" in refused.narrow) == (
        f"this call may cost up to {format_micros(need)}" in full
    )
