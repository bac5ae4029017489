"""The biggest groups of a window by cost, and the others as one: what a top list shows.

The dashboard lists ten users per currency and ten per department. Read as every user's
sums and ranked in Python, a month of 20,000 users was 20,000 rows fetched, built, summed
and sorted for twenty lines. Here the database sums each group over the very cells and
raw edges an aggregate reads (``_plan``), ranks the groups by cost with a window function,
and answers with the first ``most`` of each list beside the list's totals: the others'
sums are those less the first ones', exact integers. Names sort as Python sorts them, by
code point (SQLite's BINARY, PostgreSQL's ``"C"``), so the order is the reports' own.

A cell stopped at the cap (``_rollup.MOST``), or a sum past SQLite's 64 bits, is answered
from every group's exact sums (:func:`~._aggregate.aggregate_spend`), ranked here instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    case,
    cast,
    func,
    literal_column,
    null,
    select,
)
from sqlalchemy.exc import OperationalError

from ollama_meter.ledger._aggregate import SpendSums, aggregate_spend, span_measures
from ollama_meter.ledger._meta import ledger_zone
from ollama_meter.ledger._plan import (
    CUBE_GRAINS,
    GROUP_COLUMNS,
    RAW,
    Piece,
    cell_signs,
    cube_answers,
    cube_filters,
    edge_filter,
    plan_cells,
)
from ollama_meter.ledger._rollup import MOST
from ollama_meter.ledger._signed import (
    CELLS,
    CELLS_PER_READ,
    cells_param,
    cells_table,
    in_cells,
    stored,
)
from ollama_meter.ledger._spans import SpanFilter
from ollama_meter.ledger._unreadable import named_sums, whole
from ollama_meter.ledger.models import ROLLUPS, SPANS


@dataclass(frozen=True, slots=True)
class Ranking:
    """A top list of the groups ``by`` (of tenant, department and user): one list per value
    of ``within`` (some of ``by``; none: one list) and currency, the groups by descending
    cost, then by their ``order`` values; ``most`` of each, the others summed in one row."""

    by: tuple[str, ...]
    within: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    most: int = 10


@dataclass(frozen=True, slots=True)
class Ranked:
    """A group of a top list, or the others of one (``others`` > 0: how many it sums)."""

    keys: tuple[str, ...]
    """The group's values of :attr:`Ranking.by`; the others': of :attr:`Ranking.within`."""
    currency: str
    requests: int
    errors: int
    cost: int
    others: int = 0


Totals = tuple[int, int, int, int]
"""A list's groups, calls, errors and cost."""


@named_sums
def aggregate_ranked(
    conn: Connection, where: SpanFilter, rankings: Sequence[Ranking]
) -> list[list[Ranked]]:
    """Each list of each ranking over ``where``'s window, in the order of its ``within``
    values and currency: its first ``most`` groups, then, when it has more, one row of the
    others. One statement: every ranking from the same sums (and on PostgreSQL, too, one
    snapshot of them)."""
    names = {name for ranking in rankings for name in ranking.by}
    assert names <= set(_FINEST)  # a raw edge's model is folded to its name in Python
    finest = tuple(name for name in _FINEST if name in names)
    if not rankings:
        return []
    params: dict[str, Any] = {}
    if RAW.get() or not cube_answers(where):
        parts = [_raw_part(conn, where, finest, 1)]
    else:
        zone = ledger_zone(conn)
        pieces = plan_cells(conn, where, (), CUBE_GRAINS, zone)
        parts = [
            *_cube_parts(conn, pieces, where, finest, zone, params),
            *(
                _raw_part(conn, edge_filter(where, piece), finest, piece.sign)
                for piece in pieces
                if piece.grain is None
            ),
        ]
    if not parts:
        return [[] for _ in rankings]
    try:
        rows = conn.execute(_ranked_query(conn, parts, rankings, finest), params).all()
    except OperationalError as exc:
        if "integer overflow" not in str(exc):
            raise
        rows = None
    if rows is None or any(row[-2] == 0 and whole(row[-3]) for row in rows):
        # A sum past 64 bits, or one at the cap (what the spans give, if they are kept).
        return [rank(aggregate_spend(conn, where, r.by), r) for r in rankings]
    width = len(finest)
    tops: list[defaultdict[tuple[str, ...], list[Ranked]]] = [defaultdict(list) for _ in rankings]
    totals: list[dict[tuple[str, ...], Totals]] = [{} for _ in rankings]
    for which, *row in sorted(rows, key=lambda row: (row[0], row[-2])):  # each list in rank
        ranking = rankings[which]
        currency, requests, errors, cost, _, n, groups = row[width:]
        keys = {name: str(row[finest.index(name)]) for name in (*ranking.within, *ranking.by)}
        part = (*(keys[name] for name in ranking.within), currency)
        if n == 0:
            totals[which][part] = (int(groups), whole(requests), whole(errors), whole(cost))
        else:
            tops[which][part].append(
                Ranked(
                    tuple(keys[name] for name in ranking.by),
                    currency,
                    whole(requests),
                    whole(errors),
                    whole(cost),
                )
            )
    return [
        [row for part in sorted(found) for row in _listed(part, tops[at][part], found[part])]
        for at, found in enumerate(totals)
    ]


_FINEST = ("user", "tenant", "department")
"""What a top list may group by, in the order of the rollups' key (grouped in that order,
the database sorts less)."""


def rank(sums: Sequence[SpendSums], ranking: Ranking) -> list[Ranked]:
    """:func:`aggregate_ranked` from every group's sums (grouped by ``ranking.by``)."""
    at = {name: i for i, name in enumerate(ranking.by)}
    parts: defaultdict[tuple[str, ...], list[SpendSums]] = defaultdict(list)
    for s in sums:
        parts[(*(s.keys[at[name]] for name in ranking.within), s.currency)].append(s)
    found = []
    for part in sorted(parts):
        groups = sorted(
            parts[part], key=lambda s: (-s.cost, *(s.keys[at[name]] for name in ranking.order))
        )
        top = [
            Ranked(s.keys, s.currency, s.requests, s.errors, s.cost) for s in groups[: ranking.most]
        ]
        totals = (
            len(groups),
            sum(s.requests for s in groups),
            sum(s.errors for s in groups),
            sum(s.cost for s in groups),
        )
        found += _listed(part, top, totals)
    return found


def _listed(part: tuple[str, ...], top: list[Ranked], totals: Totals) -> list[Ranked]:
    """A list's first groups, then the others' row: the list's totals less the first ones'."""
    groups, requests, errors, cost = totals
    if groups == len(top):
        return top
    rest = Ranked(
        part[:-1],
        part[-1],
        requests - sum(r.requests for r in top),
        errors - sum(r.errors for r in top),
        cost - sum(r.cost for r in top),
        others=groups - len(top),
    )
    return [*top, rest]


def _cube_parts(
    conn: Connection,
    pieces: Sequence[Piece],
    where: SpanFilter,
    by: Sequence[str],
    zone: tzinfo | None,
    params: dict[str, Any],
) -> list[Any]:
    """The rollup rows of the pieces' cells, each signed, with whether it holds the cap; the
    cells of each in ``params``."""
    c = ROLLUPS.c
    dialect = conn.dialect.name
    cost = stored(dialect, c.cost_total)
    entries = cell_signs([p for p in pieces if p.grain is not None], zone)
    parts = []
    for first in range(0, len(entries), CELLS_PER_READ):
        name = f"{CELLS}_{first}"
        params[name] = cells_param(entries[first : first + CELLS_PER_READ])
        cells = cells_table(dialect, name)
        joined, read = in_cells(dialect, cells, ROLLUPS, cube_filters(ROLLUPS, where, by))
        parts.append(
            select(
                *(read(c[name]).label(f"k{i}") for i, name in enumerate(by)),
                read(c.currency).label("currency"),
                (cells.c.sign * read(stored(dialect, c.requests))).label("requests"),
                (cells.c.sign * read(stored(dialect, c.errors))).label("errors"),
                (cells.c.sign * read(cost)).label("cost"),
                case(((read(cost) >= MOST) | (read(cost) <= -MOST), 1), else_=0).label("capped"),
            ).select_from(joined)
        )
    return parts


def _raw_part(conn: Connection, where: SpanFilter, by: Sequence[str], sign: int) -> Any:
    """The spans ``where`` picks, each as its group, its signed call, error and cost."""
    signed: Any = literal_column(f"{sign:d}")
    return select(
        *(GROUP_COLUMNS[name].label(f"k{i}") for i, name in enumerate(by)),
        SPANS.c.currency.label("currency"),
        signed.label("requests"),
        (signed * span_measures().errors).label("errors"),
        (signed * SPANS.c.cost_total).label("cost"),
        literal_column("0").label("capped"),
    ).where(*where.clauses(conn))


def _ranked_query(
    conn: Connection, parts: Sequence[Any], rankings: Sequence[Ranking], finest: Sequence[str]
) -> Any:
    """Rows of (ranking's index, *``finest`` values (null where it is not by them), currency,
    calls, errors, cost, capped cells, rank, groups): the first ``most`` of each list of each
    ranking, ranked from 1, and each list's totals, ranked 0 (of its ``within`` values)."""
    signed: Any = _union(parts).subquery("parts")
    keys = [signed.c[f"k{i}"] for i in range(len(finest))]
    sums = (
        select(*keys, signed.c.currency, *(func.sum(signed.c[n]).label(n) for n in _SUMS))
        .group_by(*keys, signed.c.currency)
        .having(func.sum(signed.c.requests) != 0)  # a group only in cells subtracted again
        .cte("sums")
    )
    collation = "C" if conn.dialect.name == "postgresql" else "BINARY"
    zero: Any = literal_column("0")
    none: Any = cast(null(), String)
    selects = []
    for which, ranking in enumerate(rankings):
        at = {name: f"k{finest.index(name)}" for name in ranking.by}
        grouped: Any = sums
        if len(ranking.by) < len(finest):
            by = [sums.c[at[name]] for name in ranking.by]
            grouped = (
                select(*by, sums.c.currency, *(func.sum(sums.c[n]).label(n) for n in _SUMS))
                .group_by(*by, sums.c.currency)
                .cte(f"by{which}")
            )
        within = [*(grouped.c[at[name]] for name in ranking.within), grouped.c.currency]
        index: Any = literal_column(f"{which:d}").label("which")
        if ranking.most > 0:
            order = [grouped.c[at[n]].collate(collation) for n in ranking.order]
            ranked = select(
                *(
                    grouped.c[at[n]] if n in at else none.label(f"k{i}")
                    for i, n in enumerate(finest)
                ),
                grouped.c.currency,
                *(grouped.c[n] for n in _SUMS),
                func.row_number()
                .over(partition_by=within, order_by=[grouped.c.cost.desc(), *order])
                .label("n"),
            ).subquery(f"ranked{which}")
            selects.append(
                select(index, *(c for c in ranked.c), zero.label("groups")).where(
                    ranked.c.n <= ranking.most
                )
            )
        selects.append(
            select(
                index,
                *(
                    grouped.c[at[n]] if n in ranking.within else none.label(f"k{i}")
                    for i, n in enumerate(finest)
                ),
                grouped.c.currency,
                *(func.sum(grouped.c[n]).label(n) for n in _SUMS),
                zero.label("n"),
                func.count().label("groups"),
            ).group_by(*within)
        )
    return _union(selects)


def _union(selects: Sequence[Any]) -> Any:
    first, *more = selects
    return first.union_all(*more) if more else first


_SUMS = ("requests", "errors", "cost", "capped")
