"""Top lists: the biggest groups by cost, and the others as one row of their sums.

The dashboard shows ten users per currency and ten per department. The ledger ranks them
(``Ledger.spends_ranked``) and answers with those and each list's totals, so a month of
20,000 users is twenty rows here, not 20,000 built and sorted for twenty lines. Builds
data from the ledger's answer; reads nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ollama_meter.ledger import Ranked, Ranking
from ollama_meter.records import Micros
from ollama_meter.reports._rows import Row


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class CostRow(Row):
    """One group of a top list (or its others, with no labels): calls, errors, cost."""

    FIGURES: ClassVar[tuple[str, ...]] = ("requests", "errors", "cost", "currency")
    labels: tuple[tuple[str, str], ...]
    requests: int
    errors: int
    cost: Micros
    currency: str


@dataclass(frozen=True, slots=True)
class Listed:
    """A top list in one currency: its first :attr:`rows` in order (by descending cost, then
    name), and the ``others`` after them as :attr:`rest`, their sums (None when none)."""

    currency: str
    rows: list[CostRow] = field(default_factory=list)
    others: int = 0
    rest: CostRow | None = None

    def cut(self, most: int) -> Listed:
        """The first ``most`` rows (at most those read), the rows after them in the others."""
        moved = self.rows[most:]
        if not moved:
            return self
        rest = [*moved, *([self.rest] if self.rest is not None else [])]
        return Listed(
            self.currency,
            self.rows[:most],
            self.others + len(moved),
            _summed(rest, self.currency),
        )

    def costs(self) -> list[int]:
        """The rows' costs, then the others' (0 when none): the parts a page rounds together."""
        return [*(int(row.cost) for row in self.rows), int(self.rest.cost) if self.rest else 0]


def _summed(rows: Sequence[CostRow], currency: str) -> CostRow:
    return CostRow(
        (),
        requests=sum(r.requests for r in rows),
        errors=sum(r.errors for r in rows),
        cost=Micros(sum(int(r.cost) for r in rows)),
        currency=currency,
    )


def top_lists(found: Sequence[Ranked], ranking: Ranking) -> dict[tuple[str, ...], Listed]:
    """The ledger's answer to ``ranking`` as a :class:`Listed` per (``within`` values,
    currency)."""
    lists: dict[tuple[str, ...], Listed] = {}
    at = [ranking.by.index(name) for name in ranking.within]
    for ranked in found:
        if ranked.others:  # a list's others: the list's rows came before
            part = (*ranked.keys, ranked.currency)
            rows = lists[part].rows if part in lists else []
            lists[part] = Listed(ranked.currency, rows, ranked.others, _row((), ranked))
        else:
            part = (*(ranked.keys[i] for i in at), ranked.currency)
            row = _row(tuple(zip(ranking.by, ranked.keys, strict=True)), ranked)
            lists.setdefault(part, Listed(ranked.currency)).rows.append(row)
    return lists


def _row(labels: tuple[tuple[str, str], ...], ranked: Ranked) -> CostRow:
    return CostRow(labels, ranked.requests, ranked.errors, Micros(ranked.cost), ranked.currency)
