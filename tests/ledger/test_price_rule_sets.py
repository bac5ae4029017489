"""`pricing set` puts its price in force: setting a price that an older rule already holds,
while a newer one for the same pattern and start overrides it, adds it again as the newest."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.pricing import PriceBook, PriceRule
from ollama_meter.testing import OllamaEmulator

_DAYS = st.none() | st.integers(0, 2).map(lambda n: date(2026, 11, 29) + timedelta(days=n))


def _at(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["llama3.1:*", "library/llama3.1:*"]),
            st.integers(1, 2),
            _DAYS,
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    )
)
@example([("llama3.1:*", 1, None, False), ("llama3.1:*", 2, None, False),
          ("llama3.1:*", 1, None, False)])  # fmt: skip
def test_a_price_set_is_in_force_until_a_later_start(
    sets: list[tuple[str, int, date | None, bool]],
) -> None:
    """1, then 2, then 1 again: the third said "(already there)" and changed nothing; the
    price stayed 2. Whatever came before, a price just set is the one in force on each of its
    dates that no rule starting later claims."""
    with TemporaryDirectory() as tmp:
        ledger = Ledger(f"sqlite:///{Path(tmp) / 'l.db'}")
        for pattern, price, start, ends in sets:
            until = start + timedelta(days=2) if ends and start else None
            rule = PriceRule(pattern, "USD", input_per_1m=Decimal(price),
                             effective_from=start, effective_until=until)  # fmt: skip
            ((saved, _),) = ledger.add_price_rules([rule])
            book = PriceBook(ledger.price_rules(), tz=UTC, currency="USD")  # type: ignore[arg-type]
            for n in range(-1, 4):
                day = date(2026, 11, 29) + timedelta(days=n)
                if not saved.applies_on(day):
                    continue
                chosen = book.rule_for("llama3.1:8b", _at(day))
                assert chosen is not None
                later = (chosen.effective_from or date.min) > (start or date.min)
                assert later or chosen.prices() == rule.prices(), (day, chosen, rule)
        ledger.dispose()


def test_setting_the_old_price_again_puts_it_back_in_force(
    cli: Any, sqlite_url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    for price in ("1000", "2000", "1000"):
        result = cli("pricing", "set", "llama3.1:*", "--input-per-1m", price)
        assert result.code == 0 and "already there" not in result.stdout, result.stdout
    assert cli("chat", "-m", "llama3.1:8b", "one two three").code == 0
    (span,) = json.loads(cli("log", "--json").stdout)
    assert span["cost"] == f"{span['input_tokens'] * 1000 / 10**6:.6f}"
    again = cli("pricing", "set", "llama3.1:*", "--input-per-1m", "1000")
    assert "already there" in again.stdout  # the rule in force, set again: nothing to add
