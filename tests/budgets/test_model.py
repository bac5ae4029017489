"""Budget data: validation and the DEPARTMENT_BUDGETS format."""

from __future__ import annotations

import pytest

from ollama_meter.budgets import (
    Budget,
    CallBound,
    Estimate,
    PastCall,
    bound_cost,
    parse_limit,
    parse_thresholds,
)
from ollama_meter.pricing import PriceBook
from ollama_meter.records import parse_department_budgets
from tests.factories import token_prices


def test_department_budgets_from_json() -> None:
    budgets = parse_department_budgets(
        '{"sales": {"daily": 5, "monthly": 100.50}, "ops": {"weekly": "20", "soft": true, "thresholds": [90, 50]}}',
        currency="EUR",
    )
    assert [
        (b.tenant, b.department, b.period, b.limit, b.hard, b.thresholds, b.currency)
        for b in budgets
    ] == [
        ("*", "sales", "day", 5_000_000, True, (75, 90, 100), "EUR"),
        ("*", "sales", "month", 100_500_000, True, (75, 90, 100), "EUR"),
        ("*", "ops", "week", 20_000_000, False, (50, 90), "EUR"),
    ]
    assert budgets[0].covers("acme", "sales") and budgets[0].covers("globex", "sales")
    assert not budgets[0].covers("acme", "ops")
    assert budgets[0].scope("acme") == "acme/sales"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{sales", "not valid JSON"),
        ("[1]", "expected an object"),
        ('{"sales": 5}', "expected an object"),
        ('{"sales": {"yearly": 5}}', "unknown key"),
        ('{"sales": {"soft": true}}', "at least one of daily"),
        ('{"sales": {"daily": -1}}', "must not be negative"),
        ('{"sales": {"daily": "lots"}}', "is not a number"),
        ('{"sales": {"daily": true}}', "must be an amount"),
        ('{"sales": {"daily": 1, "thresholds": "50"}}', "list of whole percentages"),
        ('{"bad name": {"daily": 1}}', "department name"),
    ],
)
def test_bad_department_budgets_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_department_budgets(text, currency="USD")


def test_budget_validation() -> None:
    with pytest.raises(ValueError, match="period"):
        Budget(tenant="a", department=None, period="year", limit=1, currency="USD")
    with pytest.raises(ValueError, match="more than 0"):
        Budget(tenant="a", department=None, period="day", limit=0, currency="USD")
    with pytest.raises(ValueError, match="thresholds"):
        Budget(tenant="a", department=None, period="day", limit=1, currency="USD", thresholds=(0,))
    with pytest.raises(ValueError, match="tenant name"):
        Budget(tenant="a b", department=None, period="day", limit=1, currency="USD")
    assert parse_thresholds("90, 50,75,50") == (50, 75, 90)
    with pytest.raises(ValueError, match="whole percentages"):
        parse_thresholds("half")
    assert parse_limit("0.000001", what="x") == 1


def test_bound_uses_the_calls_own_size_not_history() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    book = PriceBook([token_prices(id=1)], tz=ZoneInfo("UTC"), currency="USD")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    small_history = [PastCall(5, 20, 0, 0, 0)]
    # 1000 per 1M in, 2000 per 1M out: micro-units are tokens x 1000 and x 2000.
    bound = bound_cost(book, "m", now, CallBound(1_000_000, 64), small_history)
    assert bound == Estimate(1_000_000 * 1000 + 64 * 2000, "USD")
    assert bound_cost(book, "m", now, CallBound(10, 0), []).amount == 10_000
