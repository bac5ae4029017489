"""A pricing file prices the same after any edit as it does read fresh: among its own rules for
one pattern and date, the later in the file wins, however the file got to be what it is. And an
edit of some models' rules moves no other model's price, rules set since with ``pricing set``
included."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hypothesis import example, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.periods import FIRST_DAY
from ollama_meter.pricing import PriceBook, PriceRule, parse_pricing_toml
from tests.pricing.test_pricing_file_shadows import _toml, ordered

UTC_ZONE = UTC
_DAYS = st.none() | st.integers(0, 3).map(lambda n: date(2026, 11, 29) + timedelta(days=n))
_RULES = st.lists(
    st.tuples(st.sampled_from(["llama3.1:*", "*"]), st.integers(1, 3), _DAYS, _DAYS),
    min_size=1,
    max_size=4,
)
_COUNTER = itertools.count()
Spec = tuple[str, int, date | None, date | None]


def _file(specs: list[tuple[str, int, date | None, date | None]]) -> str | None:
    """The file's text, or None when ometer refuses it (a rule in it would price no day)."""
    fixed = ordered(specs)
    text = _toml(fixed)
    try:
        parse_pricing_toml(text, default_currency="USD")
    except ValueError:
        return None
    return text


def _sync(ledger: Ledger, text: str) -> None:
    rules = parse_pricing_toml(text, default_currency="USD", source="file:/p.toml")
    ledger.sync_price_rules("file:/p.toml", text.encode(), lambda: rules)


def _prices(ledger: Ledger, days: set[date] | None = None) -> list[object]:
    """What a call to llama3.1:8b costs on every day the choice of rule can change, or on
    ``days``."""
    book = PriceBook(ledger.price_rules(), tz=UTC_ZONE, currency="USD")  # type: ignore[arg-type]
    if days is None:
        days = {FIRST_DAY} | {
            d for r in book.rules for d in (r.effective_from, r.effective_until) if d
        }
    found = []
    for day in sorted(days):
        rule = book.rule_for("llama3.1:8b", datetime.combine(day, datetime.min.time(), UTC))
        found.append((day, rule and rule.prices()))
    return found


@settings(max_examples=60, deadline=None)
@given(before=_RULES, after=_RULES)
@example(
    before=[("llama3.1:*", 1, None, date(2026, 12, 1))],
    after=[("llama3.1:*", 2, None, None), ("llama3.1:*", 1, None, date(2026, 12, 1))],
)
def test_an_edited_pricing_file_prices_as_the_same_file_read_fresh(
    before: list[tuple[str, int, date | None, date | None]],
    after: list[tuple[str, int, date | None, date | None]],
) -> None:
    """'1 until December' in the file, then '2' written above it for the months after: read
    fresh, the later rule (1) wins in November; synced as an edit, the old rule kept its id
    and the new one, added after it, won every day: November was billed 2."""
    old, new = _file(before), _file(after)
    if old is None or new is None:
        return
    with TemporaryDirectory() as tmp:
        edited = Ledger(f"sqlite:///{Path(tmp) / 'edited.db'}")
        fresh = Ledger(f"sqlite:///{Path(tmp) / 'fresh.db'}")
        _sync(edited, old)
        _sync(edited, new)
        _sync(fresh, new)
        assert _prices(edited) == _prices(fresh)
        edited.dispose()
        fresh.dispose()


def test_an_unchanged_rule_keeps_its_id_when_rules_are_added_after_it(tmp_path: Path) -> None:
    """Ids still stay where the file's order allows: a rule set since with ``pricing set``
    keeps winning over the file's older rules (only rules after an edit are added again)."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    _sync(ledger, _toml([("llama3.1:*", 1, None, None)]))
    (first,) = ledger.price_rules()
    _sync(ledger, _toml([("llama3.1:*", 1, None, None), ("qwen2.5:*", 2, None, None)]))
    assert [r.id for r in ledger.price_rules() if r.pattern == "llama3.1:*"] == [first.id]
    assert isinstance(first, PriceRule)


_EVERY_DAY = {FIRST_DAY} | {date(2026, 11, 28) + timedelta(days=n) for n in range(7)}
"""Every day a drawn rule (:data:`_DAYS`) can start or end on, and one before and after."""
_OTHERS = st.lists(
    st.tuples(st.sampled_from(["qwen2.5:*", "qwen2.5:7b"]), st.integers(1, 3), _DAYS, _DAYS),
    max_size=3,
)
_SET_SINCE = st.lists(
    st.tuples(st.sampled_from(["llama3.1:*", "*"]), st.integers(4, 6), _DAYS, _DAYS),
    min_size=1,
    max_size=2,
)


def _interleaved(draw: st.DrawFn, ours: list[Any], others: list[Any]) -> list[Any]:
    """``ours`` and ``others`` in one list, each in its own order, as drawn."""
    places = draw(st.permutations([True] * len(ours) + [False] * len(others)))
    mine, theirs = iter(ours), iter(others)
    return [next(mine) if place else next(theirs) for place in places]


@settings(max_examples=50, deadline=None)
@given(llama=_RULES, before=_OTHERS, after=_OTHERS, set_since=_SET_SINCE, data=st.data())
@example(
    llama=[("llama3.1:*", 1, None, None)],
    before=[],
    after=[("qwen2.5:*", 5, None, None)],
    set_since=[("llama3.1:*", 4, None, None)],
    data=None,
)
def test_an_edit_of_other_models_rules_moves_no_price_set_since(
    llama: list[Spec], before: list[Spec], after: list[Spec], set_since: list[Spec], data: Any
) -> None:
    """A file pricing llama3.1 at 1, then `pricing set 'llama3.1:*' 4`: the later rule wins, 4.
    A qwen2.5 rule written above llama3.1's in the file added llama3.1's again after it (ids
    follow the file), now the newest: llama3.1 went back to 1, by an edit of qwen2.5's price."""
    ours = ordered(llama)

    def file_of(others: list[Spec]) -> str | None:
        if data is None:
            return _file(ordered(others) + ours)
        return _file(_interleaved(data.draw, ours, ordered(others)))

    old, new = file_of(before), file_of(after)
    if old is None or new is None:
        return
    with TemporaryDirectory() as tmp:
        ledger = Ledger(f"sqlite:///{Path(tmp) / 'l.db'}")
        _sync(ledger, old)
        ledger.add_price_rules(
            [
                PriceRule(p, "USD", input_per_1m=Decimal(n), effective_from=a, effective_until=b)
                for p, n, a, b in ordered(set_since)
            ]
        )
        priced = _prices(ledger, _EVERY_DAY)
        _sync(ledger, new)
        assert _prices(ledger, _EVERY_DAY) == priced
        ledger.dispose()
