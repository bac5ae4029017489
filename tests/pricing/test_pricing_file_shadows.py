"""A pricing file never holds a rule that prices no day: one rule prices a call, so a rule
that some later rule beats on every one of its dates is refused, saying which, not kept dead."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import example, given, strategies as st

from ollama_meter.periods import FIRST_DAY, LAST_DAY
from ollama_meter.pricing import PriceRule, parse_pricing_toml, select_rule

_SPELLINGS = ("llama3.1:*", "library/llama3.1:*", "LLAMA3.1:*")
_DAYS = st.none() | st.integers(0, 4).map(lambda n: date(2026, 11, 29) + timedelta(days=n))


def ordered(
    specs: list[tuple[str, int, date | None, date | None]],
) -> list[tuple[str, int, date | None, date | None]]:
    """Drawn (pattern, price, date, date) as rules: two dates in order, the later one's day
    included (a rule's ``until`` is the first day it no longer holds)."""
    fixed = []
    for pattern, price, one, other in specs:
        start, end = one, other
        if one is not None and other is not None and other <= one:
            start, end = other, one + timedelta(days=1)
        fixed.append((pattern, price, start, end))
    return fixed


def _toml(specs: list[tuple[str, int, date | None, date | None]]) -> str:
    tables = []
    for pattern, price, start, end in specs:
        lines = [f'model = "{pattern}"', f"input_per_1m = {price}"]
        lines += [f"from = {start}"] if start else []
        lines += [f"until = {end}"] if end else []
        tables.append("[[rule]]\n" + "\n".join(lines) + "\n")
    return "\n".join(tables)


def _dead(specs: list[tuple[str, int, date | None, date | None]]) -> list[int]:
    """The rules (numbered from 1) whose price is in force on none of their dates, found by
    asking :func:`select_rule` on every day where the choice can change."""
    rules = [
        PriceRule(
            pattern,
            "USD",
            id=number,
            input_per_1m=Decimal(price),
            effective_from=start,
            effective_until=end,
        )
        for number, (pattern, price, start, end) in enumerate(specs, start=1)
    ]
    edges = {FIRST_DAY} | {d for r in rules for d in (r.effective_from, r.effective_until) if d}
    dead = []
    for rule in rules:
        days = [d for d in edges if rule.applies_on(d)]
        chosen = (select_rule(rules, "llama3.1:8b", day) for day in days)
        if not any(c is not None and c.same_as(replace(rule, pattern=c.pattern)) for c in chosen):
            dead.append(rule.id)
    return dead


@given(
    st.lists(
        st.tuples(st.sampled_from(_SPELLINGS), st.integers(1, 2), _DAYS, _DAYS),
        min_size=1,
        max_size=5,
    )
)
@example([("llama3.1:*", 1, None, date(2026, 12, 1)), ("llama3.1:*", 2, None, None)])
@example([("llama3.1:*", 1, date(2026, 11, 29), date(2026, 12, 1)), ("llama3.1:*", 2, None, None)])
def test_a_file_is_refused_exactly_when_one_of_its_rules_prices_no_day(
    specs: list[tuple[str, int, date | None, date | None]],
) -> None:
    """'1 until December, then 2' written without the second's ``from`` was taken without a
    word, and every call paid 2: both start on the same (no) date, so the later rule won on
    every day and the old price never applied, not even in November."""
    fixed = ordered(specs)
    dead = _dead(fixed)
    if not dead:
        assert len(parse_pricing_toml(_toml(fixed), default_currency="USD")) == len(fixed)
        return
    with pytest.raises(ValueError) as raised:
        parse_pricing_toml(_toml(fixed), default_currency="USD")
    message = str(raised.value)
    assert f"rule {dead[0]} would never apply" in message, (message, dead)
    assert "one rule prices a call" in message and "\n" not in message


def test_an_old_price_ended_and_a_new_one_with_no_start_is_refused_naming_both() -> None:
    text = _toml([("llama3.1:*", 1, None, date(2026, 12, 1)), ("llama3.1:*", 2, None, None)])
    with pytest.raises(ValueError) as raised:
        parse_pricing_toml(text, default_currency="USD")
    assert str(raised.value).startswith("rule 2: prices 'llama3.1:*' on every date of rule 1")
    assert "give the newer price a later `from`" in str(raised.value)


def test_a_file_of_a_price_a_day_for_decades_is_read() -> None:
    """20,000 rules for one pattern, a new price each day: asking which rule wins on each day of
    each rule took 44 s for 400 rules, and grew as their cube (20,000: weeks)."""
    text = "".join(
        f'[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = {n % 7 + 1}\n'
        f"from = {date(1980, 1, 1) + timedelta(days=n)}\n"
        for n in range(20_000)
    )
    assert len(parse_pricing_toml(text, default_currency="USD")) == 20_000
    with pytest.raises(ValueError, match=r"^[^\n]{,200}rule 20001 would never apply"):
        parse_pricing_toml(
            text
            + _toml([("llama3.1:*", 9, date(2040, 1, 1), None)])
            + _toml([("llama3.1:*", 1, date(2040, 1, 1), None)]),
            default_currency="USD",
        )


def test_a_rule_that_ends_before_any_day_is_refused_saying_so() -> None:
    """An IndexError (exit 70, "a bug in ometer") for a rule with no day to find a winner on."""
    with pytest.raises(ValueError, match=r"^rule 2: ends on 1970-01-01, before the first day"):
        parse_pricing_toml(
            _toml([("a", 1, None, None), ("a", 2, None, date(1970, 1, 1))]),
            default_currency="USD",
        )


_ANY_DAY = st.none() | st.sampled_from(
    [
        FIRST_DAY,
        FIRST_DAY + timedelta(days=1),
        date(2026, 12, 1),
        LAST_DAY - timedelta(days=1),
        LAST_DAY,
    ]
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from((*_SPELLINGS, "qwen2.5:*")), st.integers(1, 2), _ANY_DAY, _ANY_DAY
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_dates_in_a_file_are_taken_or_refused_in_one_line(
    specs: list[tuple[str, int, date | None, date | None]],
) -> None:
    fixed = [
        (p, n, a, b) if a is None or b is None or a < b else (p, n, b, a if a > b else None)
        for p, n, a, b in specs
    ]
    message = None
    try:
        parse_pricing_toml(_toml(fixed), default_currency="USD")
    except ValueError as exc:  # anything else is a bug: exit 70 and a traceback
        message = str(exc)
    assert message is None or ("\n" not in message and message.startswith("rule ")), message
