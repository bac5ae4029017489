"""Budget data: validation and the DEPARTMENT_BUDGETS format."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

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
from ollama_meter.records import Usage, parse_department_budgets
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
        ('{"sales": {"daily": -1}}', "must be more than 0"),
        ('{"sales": {"daily": "lots"}}', "is not a number"),
        ('{"sales": {"daily": true}}', "must be an amount"),
        ('{"sales": {"daily": 1, "thresholds": "50"}}', "list of whole percentages"),
        ('{"sales": {"daily": 1, "thresholds": [true, 50]}}', "list of whole percentages"),
        ('{"sales": {"daily": 1, "soft": "false"}}', '"soft" must be true or false'),
        ('{"sales": {"daily": 1, "soft": 1}}', '"soft" must be true or false'),
        ('{"bad name": {"daily": 1}}', "department name"),
        ('{"sales": {"daily": 1}, "sales": {"daily": 9}}', "'sales' is given twice"),
        ('{"sales": {"daily": 1, "daily": 9}}', "'daily' is given twice"),
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


@pytest.mark.parametrize("limit", [1500000.5, 2e6, Decimal(10**6), True, "1000000"], ids=repr)
def test_a_limit_that_is_not_whole_micro_units_is_refused_when_made(limit: object) -> None:
    """``Budget(limit=1.5e6)`` from Python was saved, and the ledger's every later read of its
    budgets refused the row (``limit_micros 1500000.5 is not a whole number``): every call on
    the ledger failed until the row was removed. A Decimal failed to save in SQLite's words,
    ``True`` was a limit of one micro-unit, text a TypeError from a comparison."""
    with pytest.raises(ValueError, match=r"^a budget's limit is whole micro-units of its "):
        Budget(tenant="a", department=None, period="day", limit=limit, currency="USD")  # type: ignore[arg-type]


def test_bound_uses_the_calls_own_size_not_history() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    book = PriceBook([token_prices(id=1)], tz=ZoneInfo("UTC"), currency="USD")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    small_history = [PastCall(5, 20, 0, 0, 0)]
    # 1000 per 1M in, 2000 per 1M out: micro-units are tokens x 1000 and x 2000.
    bound = bound_cost(book, "m", now, CallBound(1_000_000, 64), small_history)
    expected = Estimate(1_000_000 * 1000 + 64 * 2000, "USD", usage=Usage(1_000_000, 64))
    assert bound == expected  # what it prices: a killed call's charge (test_killed_mid_reply)
    assert bound_cost(book, "m", now, CallBound(10, 0), []).amount == 10_000


@given(
    st.lists(
        st.one_of(st.integers(-5, 1005), st.booleans(), st.decimals(1, 100, places=1)), max_size=12
    )
)
def test_a_budget_keeps_whole_percentages_in_order_or_refuses_them(given_: list[object]) -> None:
    """What a budget keeps is what the ledger can store and alerts can walk from the lowest."""
    valid = 0 < len(given_) <= 10 and all(type(t) is int and 0 < t <= 1000 for t in given_)
    if not valid:
        with pytest.raises(ValueError, match="whole percentages between 1 and 1000"):
            Budget(
                tenant="a",
                department=None,
                period="day",
                limit=1,
                currency="USD",
                thresholds=given_,
            )  # type: ignore[arg-type]
        return
    budget = Budget(
        tenant="a", department=None, period="day", limit=1, currency="USD", thresholds=given_
    )  # type: ignore[arg-type]
    assert list(budget.thresholds) == sorted(set(given_))  # type: ignore[type-var]
    assert len(",".join(map(str, budget.thresholds))) <= 64  # the ledger's column


WARM_LOAD = st.integers(0, 99_000_000)
"""What Ollama reports as ``load_duration`` for a model already in memory: milliseconds."""


@given(
    warm=st.lists(
        st.tuples(st.integers(1, 500), st.integers(1, 500), WARM_LOAD), min_size=1, max_size=20
    ),
    cold_load=st.integers(100_000_000, 120_000_000_000),
    cold_seen=st.integers(0, 3),
    load=st.integers(0, 120_000_000_000),
)
def test_a_cold_load_is_within_the_bound_however_many_warm_calls_came_before(
    warm: list[tuple[int, int, int]], cold_load: int, cold_seen: int, load: int
) -> None:
    """With ``charge_load``, a call that finds the model unloaded (idle past its keep_alive,
    or evicted by another) pays the load: warm calls say nothing of how long that takes.
    Bounded with the loads of warm calls, a busy model's bound held a load of a few
    milliseconds, and each of the calls that next found it cold overshot by a whole load."""
    from dataclasses import replace
    from datetime import UTC, datetime
    from decimal import Decimal
    from zoneinfo import ZoneInfo

    rule = replace(token_prices(id=1), gpu_hour=Decimal(2), charge_load=True)
    book = PriceBook([rule], tz=ZoneInfo("UTC"), currency="USD")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    history = [PastCall(10, 10, 10 * p, 10 * e, w) for p, e, w in warm]
    history += [PastCall(10, 10, 10, 10, cold_load)] * cold_seen
    # No longer than the model's loads seen (or, none seen, the default of 60 s)
    load = min(load, cold_load if cold_seen else 60_000_000_000)
    bound = bound_cost(book, "m", now, CallBound(10, 10), history)
    actual = book.cost("m", now, Usage(10, 10, 10, 10, load)).total
    assert actual <= bound.amount


@given(
    prices=st.fixed_dictionaries(
        {},
        optional={
            "gpu_hour": st.integers(1, 10_000),
            "watts": st.integers(1, 2_000),
            "per_request": st.integers(1, 100),
        },
    ),
    charge_load=st.booleans(),
    tokens=st.tuples(st.integers(0, 10**6), st.integers(0, 10**5)),
    history=st.lists(st.tuples(st.integers(1, 10**9), st.integers(1, 10**9)), max_size=5),
    over=st.integers(0, 10**12),
)
def test_a_call_cut_at_its_time_cap_costs_at_most_its_bound(
    prices: dict[str, int],
    charge_load: bool,
    tokens: tuple[int, int],
    history: list[tuple[int, int]],
    over: int,
) -> None:
    """When time is priced, the bound says how much busy time it pays for (``busy_ns``): a
    call cut there is charged its wall time as busy time (Ollama's own figures never come),
    which then costs no more than the bound, however slow the server was. When time is not
    priced there is no time cap: a long call costs its tokens only."""
    from dataclasses import replace
    from datetime import UTC, datetime
    from decimal import Decimal
    from zoneinfo import ZoneInfo

    extra = {name: Decimal(value) for name, value in prices.items()}
    if "watts" in extra:
        extra["kwh_price"] = Decimal("0.3")
    rule = replace(token_prices(id=1), charge_load=charge_load, **extra)
    book = PriceBook([rule], tz=ZoneInfo("UTC"), currency="USD")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    past = [PastCall(10, 10, 10 * p, 10 * e, 0) for p, e in history]
    inputs, outputs = tokens
    bound = bound_cost(book, "m", now, CallBound(inputs, outputs), past)
    timed = "gpu_hour" in prices or "watts" in prices
    assert (bound.busy_ns is not None) == timed
    if bound.busy_ns is None:
        # However long it ran, only tokens and fees are charged.
        assert book.cost("m", now, Usage(inputs, outputs, over, over, over)).total <= bound.amount
        return
    cut = Usage(inputs, outputs, prompt_eval_ns=0, eval_ns=bound.busy_ns, load_ns=0)
    assert book.cost("m", now, cut).total <= bound.amount
    assert bound.wait_ns is not None and bound.wait_ns >= bound.busy_ns  # a load may come first


@pytest.mark.parametrize("text", ["50_0", "٥٠", "５０", "7_5,90"])
def test_thresholds_are_ascii_digits_only(text: str) -> None:
    """int() reads '50_0' as 500 and Arabic-Indic or full-width digits as numbers: a typo
    set an alert at 500 % without a word (dates and periods already take ASCII digits only)."""
    with pytest.raises(ValueError, match="are not whole percentages like 50,75,90,100"):
        parse_thresholds(text)
