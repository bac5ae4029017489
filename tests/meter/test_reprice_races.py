"""``ometer reprice`` beside other writers: what it says it moved is what moved in the ledger.

A second reprice, a gateway's spans or a prune between a page's read and its write: the
summaries' deltas, per currency, add up to exactly what the ledger's totals moved, and
every rollup is what a rebuild from the raw spans gives.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings, strategies as st
from sqlalchemy import event, func, select

from ollama_meter.ledger import Ledger, SpanFilter, prune, rebuild
from ollama_meter.ledger.models import SPANS
from ollama_meter.meter import RepriceSummary, SpanRecord, reprice
from ollama_meter.pricing import PriceBook
from tests.factories import make_span, token_prices
from tests.ledger.test_transfer import _tables

BERLIN = ZoneInfo("Europe/Berlin")
SINCE = datetime(2026, 11, 1, tzinfo=UTC)


def _book(currency: str, price: int, rule_id: int) -> PriceBook:
    rule = replace(token_prices("*", id=rule_id), currency=currency, input_per_1m=Decimal(price))
    return PriceBook([rule], tz=BERLIN, currency="USD")


BOOKS = [_book("USD", 1000, 1), _book("EUR", 3000, 2), _book("USD", 7, 3)]


def _calls(count: int, *, first: int = 0) -> list[SpanRecord]:
    at = datetime(2026, 11, 3, 9, tzinfo=UTC)
    return [
        make_span(
            id=f"01K{first + n:023d}",
            started_at=at + timedelta(hours=7 * (first + n)),
            input_tokens=100 + n,
            cost_tokens=5 * n,
            cost_total=5 * n,
        )
        for n in range(count)
    ]


def _totals(ledger: Ledger) -> Counter[str]:
    with ledger.read() as conn:
        rows = conn.execute(
            select(SPANS.c.currency, func.sum(SPANS.c.cost_total)).group_by(SPANS.c.currency)
        )
        return Counter({currency: int(total) for currency, total in rows})


def _said(summaries: list[RepriceSummary]) -> dict[str, int]:
    """What the summaries say moved, per currency, added up (zeros left out)."""
    moved: dict[str, int] = {}
    for summary in summaries:
        for currency, delta in summary.delta().items():
            moved[currency] = moved.get(currency, 0) + delta
    return {c: v for c, v in sorted(moved.items()) if v}


def _difference(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    """What the ledger's totals moved, per currency (zeros left out)."""
    moved = {c: after[c] - before[c] for c in sorted(before.keys() | after.keys())}
    return {c: v for c, v in moved.items() if v}


def test_two_reprices_at_once_say_together_what_moved_once(db_url: str) -> None:
    """A second reprice of the same rules between the first's read of a page and its write:
    both said they moved the page's costs, so together they claimed twice what moved."""
    ledger, other = Ledger(db_url, zone="Europe/Berlin"), Ledger(db_url)
    ledger.record(_calls(6))
    before = _totals(ledger)
    summaries: list[RepriceSummary] = []
    connects = 0

    def meanwhile(*_: Any) -> None:
        nonlocal connects
        connects += 1
        if connects == 3:  # the first page read, its write not begun
            summaries.append(reprice(other, BOOKS[1], since=SINCE))

    event.listen(ledger.engine, "engine_connect", meanwhile)
    try:
        summaries.append(reprice(ledger, BOOKS[1], since=SINCE))
    finally:
        event.remove(ledger.engine, "engine_connect", meanwhile)
    assert len(summaries) == 2
    assert _said(summaries) == _difference(before, _totals(ledger)) != {}
    assert sum(s.changed for s in summaries) == 6
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


def _spent(ledger: Ledger) -> dict[str, int]:
    """Every currency's total as reports read it (rollups: pruned days too)."""
    where = SpanFilter(
        since=datetime(2026, 10, 1, tzinfo=UTC), until=datetime(2027, 1, 1, tzinfo=UTC)
    )
    return {row.currency: row.cost for row in ledger.spend(where) if row.cost}


_MEANWHILE = st.one_of(
    st.tuples(st.just("reprice"), st.integers(0, len(BOOKS) - 1)),
    st.tuples(st.just("spans"), st.integers(1, 4)),
    st.tuples(st.just("prune"), st.integers(5, 30)),
)


@settings(max_examples=10, deadline=None)
@given(
    calls=st.integers(1, 12),
    book=st.integers(0, len(BOOKS) - 1),
    first=st.integers(0, len(BOOKS) - 1),
    batch=st.integers(1, 5),
    during=st.dictionaries(st.integers(1, 12), _MEANWHILE, max_size=4),
)
def test_what_reprices_say_they_moved_is_what_moved(
    tmp_path_factory: Any,
    calls: int,
    book: int,
    first: int,
    batch: int,
    during: dict[int, tuple[str, int]],
) -> None:
    """Other reprices, a gateway's spans (priced as this reprice prices them) and prunes
    between any two of a reprice's transactions: the summaries' deltas add up, currency by
    currency, to what the reports' totals moved beyond the spans added, and the rollups are
    what a rebuild gives."""
    url = f"sqlite:///{tmp_path_factory.mktemp('rp') / 'l.db'}"
    ledger, other = Ledger(url, zone="Europe/Berlin"), Ledger(url)
    ledger.record(_calls(calls))
    reprice(ledger, BOOKS[first], since=SINCE)
    before = _spent(ledger)
    summaries: list[RepriceSummary] = []
    added: dict[str, int] = {}
    connects = made = 0

    def meanwhile(*_: Any) -> None:
        nonlocal connects, made
        connects += 1
        what, value = during.pop(connects, ("", 0))
        if what == "reprice":
            summaries.append(reprice(other, BOOKS[value], since=SINCE, batch=batch))
        elif what == "spans":
            new = _calls(value, first=100 + made)
            made += value
            for span in new:
                span.apply_cost(BOOKS[book].cost_of(span))
                added[span.currency] = added.get(span.currency, 0) + span.cost_total
            other.record(new)
        elif what == "prune":
            prune(other, value, now=datetime(2026, 12, 1, tzinfo=UTC))

    event.listen(ledger.engine, "engine_connect", meanwhile)
    try:
        summaries.append(reprice(ledger, BOOKS[book], since=SINCE, batch=batch))
    finally:
        event.remove(ledger.engine, "engine_connect", meanwhile)
    after = _spent(ledger)
    moved = {c: after.get(c, 0) - before.get(c, 0) - added.get(c, 0) for c in BOOKS_CURRENCIES}
    assert _said(summaries) == {c: v for c, v in moved.items() if v}
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    ledger.dispose()
    other.dispose()


BOOKS_CURRENCIES = ("EUR", "USD")


def test_a_reprice_begun_before_a_rule_change_never_undoes_one_run_after_it(
    db_url: str,
) -> None:
    """A long reprice, its rules read; a rule changed and a second reprice run to its end
    meanwhile: the first went on writing the old rule's costs over the second's (on its
    page in hand and every page after), so the ledger ended priced by a rule no longer in
    force, after two reprices had both said they were done."""
    ledger, other = Ledger(db_url, zone="Europe/Berlin"), Ledger(db_url)
    ledger.record(_calls(9))
    ledger.add_price_rule(token_prices("*"))

    def book(of: Ledger) -> PriceBook:
        return PriceBook(of.price_rules(), tz=BERLIN, currency="USD")

    connects = 0

    def meanwhile(*_: Any) -> None:
        nonlocal connects
        connects += 1
        if connects == 3:  # the first page read, its write not begun
            other.add_price_rule(replace(token_prices("llama3.1:*"), input_per_1m=Decimal(5)))
            reprice(other, book(other), since=SINCE, reload=lambda: book(other))

    event.listen(ledger.engine, "engine_connect", meanwhile)
    try:
        summary = reprice(ledger, book(ledger), since=SINCE, batch=4, reload=lambda: book(ledger))
    finally:
        event.remove(ledger.engine, "engine_connect", meanwhile)
    now = book(ledger)
    assert summary.examined == 9
    for span in ledger.latest(SpanFilter(), 100):
        assert (span.cost_total, span.price_rule_id) == (
            now.cost_of(span).total,
            now.cost_of(span).rule_id,
        )
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


def test_a_reprice_holds_no_captured_content_in_memory(sqlite_url: str) -> None:
    """With content capture on, a reply keeps up to a million characters: a reprice read
    each page of 2,000 spans whole, prompts and replies too, and again in its write (gigabytes
    for nothing: a price depends on counts and durations, never on the text)."""
    import tracemalloc

    ledger = Ledger(sqlite_url, zone="Europe/Berlin")
    ledger.record([replace(s, prompt="p" * 10**6, reply="r" * 10**6) for s in _calls(20)])
    tracemalloc.start()
    try:
        summary = reprice(ledger, BOOKS[1], since=SINCE, batch=20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (summary.examined, summary.changed) == (20, 20)
    assert peak < 10 * 10**6, f"{peak:,} bytes held for 20 spans"  # their text is 40 MB
    (kept,) = [s for s in ledger.latest(SpanFilter(), 1) if s.reply]
    assert (len(kept.prompt or ""), len(kept.reply)) == (10**6, 10**6)


def test_reprice_says_its_window_and_each_currency_apart(cli: Any, tmp_path: Any) -> None:
    """Given --until, it said 'examined 3 span(s) since 2026-11-03', as if every day since."""
    db = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = Ledger(db, zone="Europe/Berlin")
    ledger.record(_calls(6))  # every 7 hours from 3 November 09:00 UTC (the tests' zone)
    ledger.dispose()
    assert (
        cli("pricing", "set", "*", "--input-per-1m", "2", "--currency", "EUR", "--db", db).code == 0
    )
    done = cli("reprice", "--since", "2026-11-03", "--until", "2026-11-03", "--db", db)
    assert done.code == 0, done.stderr
    # Read at the ledger's midnights (Berlin's): the call at 23:00 UTC is on 4 November there.
    assert done.stdout.splitlines() == [
        "examined 2 span(s) from 2026-11-03 through 2026-11-03; 2 changed",
        "  EUR: 0.000000 → 0.000402 (+0.000402)",
        "  USD: 0.000005 → 0.000000 (-0.000005)",
        "  1 newly priced, 0 now unpriced",  # the call that cost nothing: it had no rule
    ]
