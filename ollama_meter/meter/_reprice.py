"""Re-pricing recorded spans after a price change (``ometer reprice``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ollama_meter.ledger import Ledger, RulesChanged, SpanFilter, bulk
from ollama_meter.pricing import PriceBook
from ollama_meter.records import SpanRecord


@dataclass
class RepriceSummary:
    """What a re-pricing changed. Totals are integer micro-units per currency."""

    examined: int = 0
    changed: int = 0
    before: Counter[str] = field(default_factory=Counter)
    after: Counter[str] = field(default_factory=Counter)
    newly_priced: int = 0
    newly_unpriced: int = 0
    pruned_before: datetime | None = None
    """Set when the window reaches back past the prune horizon: the spans before it are gone,
    and their days' rollups keep the costs they were recorded with."""

    def delta(self) -> dict[str, int]:
        currencies = sorted(set(self.before) | set(self.after))
        return {c: self.after[c] - self.before[c] for c in currencies}


@bulk
def reprice(
    ledger: Ledger,
    book: PriceBook,
    *,
    since: datetime,
    until: datetime | None = None,
    batch: int = 2000,
    progress: Callable[[int], None] | None = None,
    reload: Callable[[], PriceBook] | None = None,
) -> RepriceSummary:
    """Recompute every span's cost from ``since`` under ``book``; writes only spans that moved.

    Works in keyset pages, one write transaction per page, so a large ledger
    never sits in memory and concurrent writers are blocked only briefly.

    ``reload``: ``book`` is the ledger's rules, and this gives them as they are now. A page
    is then written only under the rules in force when it is written; one whose rules
    changed since ``book`` was read is priced again under the new ones, so a reprice begun
    before a rule change never undoes one run after it.
    """
    book.check_all()  # a rule that cannot be read: no span is priced without it
    summary = RepriceSummary()
    horizon = ledger.pruned_before()
    if horizon is not None and since < horizon:
        summary.pruned_before = horizon
    where = SpanFilter(since=since, until=until)
    after = ""
    while True:
        page = ledger.page_after(where, after, batch)
        if not page:
            return summary
        moved = []
        was = {span.id: _costs(span) for span in page}
        for span in page:
            span.apply_cost(book.cost_of(span))
            if _costs(span) != was[span.id]:
                moved.append(span)
        try:
            written = ledger.update_costs(moved, None if reload is None else book.rules)
        except RulesChanged:
            assert reload is not None
            book = reload()
            book.check_all()
            continue  # the same page, read again
        # Counted from the spans as the write found them, not as the page read them: what a
        # second reprice (or a prune) did in between, this one did not move.
        stored = {old.id: old for old in written}
        for span in page:
            old = stored.get(span.id, span)
            summary.before[old.currency] += old.cost_total
            summary.after[span.currency] += span.cost_total
            if old is not span:
                summary.changed += 1
                summary.newly_priced += old.unpriced and not span.unpriced
                summary.newly_unpriced += span.unpriced and not old.unpriced
        summary.examined += len(page)
        if progress is not None:
            progress(len(page))
        after = page[-1].id


def _costs(span: SpanRecord) -> tuple[object, ...]:
    return (
        span.cost_total,
        span.cost_tokens,
        span.cost_compute,
        span.cost_energy,
        span.cost_fee,
        span.currency,
        span.unpriced,
        span.price_rule_id,
    )
