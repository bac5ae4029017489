"""Planning an aggregate: a window cut into whole rollup cells, and the raw spans at its edges.

A window [a, b) is cut into pieces of whole rollup cells, coarsest first, with
signs: [a, b) = [a, A) + [A, B) + [B, b), where A and B are the month (then day,
then quarter-hour) boundaries nearest a and b, and a piece that runs backwards
(A before a) is subtracted. Every sum in a rollup is additive. On a ledger whose
days begin at Berlin midnight, a Berlin November is one month cell; on a UTC
ledger it is the UTC month, plus the quarter hours from 23:00 UTC on 31 October,
less those from 23:00 UTC on 30 November: one month row and eight quarter rows
per group instead of thirty days of spans. What no cell covers (an end not on a
quarter hour) comes from raw spans, the open edge. Before that, each bucket is cut to
the days (or months) in which calls started (:func:`plan_cells`): a long window of few
calls plans the cells of those, not of every day it spans.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import BigInteger, Connection, Select, SmallInteger, bindparam, func, select
from sqlalchemy.sql.elements import ColumnElement

from ollama_meter.ledger._cells import (
    ANYONE,
    DAY_US,
    Grain,
    floor_cell,
    next_cell,
)
from ollama_meter.ledger._spans import SpanFilter
from ollama_meter.ledger._spellings import ANSWERED_MODEL
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger.models import ROLLUPS, SPANS

GROUP_COLUMNS: dict[str, ColumnElement[Any]] = {
    "tenant": SPANS.c.tenant,
    "department": SPANS.c.department,
    "user": func.coalesce(SPANS.c.user, ""),
    "model": ANSWERED_MODEL,
}
"""What reports group by, as raw span expressions; rollups store these values, a model folded
to the one name it counts as (``_spellings.group_values`` folds a raw row's the same way)."""

CUBE_GRAINS = (Grain.MONTH, Grain.DAY, Grain.QUARTER)
HISTOGRAM_GRAINS = (Grain.MONTH, Grain.DAY)
_MAX_GAP = {Grain.MONTH: DAY_US, Grain.DAY: DAY_US // 2, Grain.QUARTER: 450 * 10**6}
"""How far past an end a coarse cell may reach and be trimmed back with finer ones."""


RAW: ContextVar[bool] = ContextVar("ometer_raw_spans", default=False)


@contextlib.contextmanager
def raw_spans() -> Iterator[None]:
    """Answer every aggregate in this block from raw spans, as if there were no rollups."""
    token = RAW.set(True)
    try:
        yield
    finally:
        RAW.reset(token)


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of a bucket: whole cells of ``grain`` (None: raw spans) in [lo, hi) µs, added or subtracted."""

    grain: Grain | None
    lo: int
    hi: int
    sign: int
    bucket: int


def _snap(grain: Grain, t: int, low_end: bool, zone: tzinfo | None) -> int:
    floor = floor_cell(grain, t, zone)
    if floor == t:
        return t
    ceil = next_cell(grain, floor, zone)
    nearest = floor if t - floor <= ceil - t else ceil
    if abs(nearest - t) <= _MAX_GAP[grain]:
        return nearest
    return ceil if low_end else floor


def decompose(
    lo: int,
    hi: int,
    grains: Sequence[Grain],
    *,
    bucket: int = 0,
    sign: int = 1,
    zone: tzinfo | None = None,
) -> list[Piece]:
    """[lo, hi) as signed pieces of whole cells of ``grains`` (coarsest first), then raw spans.

    ``zone`` is the ledger's: where its days and months begin.
    """
    if lo == hi:
        return []
    if lo > hi:
        return decompose(hi, lo, grains, bucket=bucket, sign=-sign, zone=zone)
    if not grains:
        return [Piece(None, lo, hi, sign, bucket)]
    grain, finer = grains[0], grains[1:]
    a, b = _snap(grain, lo, True, zone), _snap(grain, hi, False, zone)
    if a >= b:
        return decompose(lo, hi, finer, bucket=bucket, sign=sign, zone=zone)
    return [
        Piece(grain, a, b, sign, bucket),
        *decompose(lo, a, finer, bucket=bucket, sign=sign, zone=zone),
        *decompose(b, hi, finer, bucket=bucket, sign=sign, zone=zone),
    ]


Buckets = Sequence[tuple[datetime, datetime]]
"""Time buckets as (start, end) in UTC, in order, not overlapping; a report's may have gaps
(the days of no call between two that hold some)."""


def _buckets(where: SpanFilter, buckets: Buckets) -> list[tuple[int, int, int]]:
    """(index, lo, hi) in µs of each bucket's part of the window."""
    assert where.since is not None
    assert where.until is not None
    since, until = to_us(where.since), to_us(where.until)
    if not buckets:
        return [(0, since, until)]
    out = []
    for index, (start, end) in enumerate(buckets):
        lo, hi = max(to_us(start), since), min(to_us(end), until)
        if lo < hi:
            out.append((index, lo, hi))
    return out


def plan(
    where: SpanFilter,
    buckets: Buckets,
    grains: Sequence[Grain],
    zone: tzinfo | None = None,
) -> list[Piece]:
    return [
        piece
        for index, lo, hi in _buckets(where, buckets)
        for piece in decompose(lo, hi, grains, bucket=index, zone=zone)
    ]


def plan_cells(
    conn: Connection,
    where: SpanFilter,
    buckets: Buckets,
    grains: Sequence[Grain],
    zone: tzinfo | None = None,
) -> list[Piece]:
    """:func:`plan`, each bucket cut to the runs of cells in it in which calls started.

    No call started outside those cells (every call is in the rollups, pruned or not), so
    the sums are the whole bucket's, and a bucket of none is not planned at all. Cut at the
    ledger's own midnights, a bucket's ends need no quarter hours: ``--since 1970-01-01
    --by day`` in another zone than the ledger's planned a day cell and up to 56 quarter
    hours for each of 20,000 days, most of them empty (1.7 million cells for three calls).
    Each run of consecutive cells is planned on its own: one bucket from a call in 1970 to
    one in 9998 planned the 96,000 months between.
    """
    cut = _buckets(where, buckets)
    if not cut:
        return []
    # Days where buckets are shorter than a month (a month's cell would keep every day of
    # it); months otherwise, fewer to find over years of calls.
    longest = max(hi - lo for _, lo, hi in cut)
    grain = Grain.DAY if longest < 28 * DAY_US else Grain.MONTH
    # From the runs of held cells to the buckets they overlap, not the other way: a window
    # of 20,000 days and three calls looks at the buckets of three days.
    lows = [lo for _, lo, _ in cut]
    pieces = []
    for start, end in held_runs(conn, grain, cut[0][1], cut[-1][2], zone):
        at = max(bisect.bisect_right(lows, start) - 1, 0)  # the bucket start is in, if any
        while at < len(cut) and cut[at][1] < end:
            index, lo, hi = cut[at]
            if hi > start:
                pieces += decompose(max(lo, start), min(hi, end), grains, bucket=index, zone=zone)
            at += 1
    return pieces


def held_runs(
    conn: Connection, grain: Grain, lo: int, hi: int, zone: tzinfo | None
) -> list[tuple[int, int]]:
    """(start, end) in µs of each run of consecutive ``grain`` cells that hold calls and
    reach into [lo, hi), in order: the stretches of time in which calls started."""
    runs: list[tuple[int, int]] = []
    for start in held_cells(conn, grain, lo, hi):
        end = next_cell(grain, start, zone)
        if end <= lo:
            continue
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


_LONGEST_CELL_US = 40 * DAY_US
"""Longer than any month of any zone: a cell that starts this long before an instant ends
before it."""


def held_cells(conn: Connection, grain: Grain, lo: int, hi: int) -> list[int]:
    """Starts (µs, in order) of the ``grain`` cells that hold rollup rows, from any that may
    hold ``lo`` (one may start up to a month before it) to ``hi``.

    A loose index scan of the rollups' key (grain, start): one lookup per cell that holds
    calls, however long the window and however many rows each cell has.
    """
    low, high = (lo - _LONGEST_CELL_US) // 10**6, -(-hi // 10**6)
    rows = conn.scalars(_held_cells(), {"grain": int(grain), "low": low, "high": high})
    return [int(start) * 10**6 for start in rows]


@functools.cache
def _held_cells() -> Select[Any]:
    """:func:`held_cells`' query, built once (its grain and bounds bind parameters): building it
    took a tenth of a budget renewal's spend read."""
    c = ROLLUPS.c
    grain = bindparam("grain", type_=SmallInteger)
    low, high = bindparam("low", type_=BigInteger), bindparam("high", type_=BigInteger)
    first = select(func.min(c.start)).where(c.grain == grain, c.start >= low, c.start < high)
    held = select(first.scalar_subquery().label("start")).cte("held", recursive=True)
    after = ROLLUPS.alias("after")
    following = select(func.min(after.c.start)).where(
        after.c.grain == grain, after.c.start > held.c.start, after.c.start < high
    )
    held = held.union_all(select(following.scalar_subquery()).where(held.c.start.is_not(None)))
    return select(held.c.start).where(held.c.start.is_not(None))


def cell_signs(
    pieces: Iterable[Piece], zone: tzinfo | None = None
) -> list[tuple[int, int, int, int]]:
    """(grain, cell start s, bucket, sign) of every rollup cell the pieces add or subtract.

    A cell both added to and subtracted from one bucket (pieces meeting at a
    boundary) cancels out here, and is not read at all.
    """
    signs: defaultdict[tuple[int, int, int], int] = defaultdict(int)
    for piece in pieces:
        assert piece.grain is not None
        cell = piece.lo
        while cell < piece.hi:
            signs[(int(piece.grain), cell // 10**6, piece.bucket)] += piece.sign
            cell = next_cell(piece.grain, cell, zone)
    return [(*key, sign) for key, sign in signs.items() if sign]


CUBE_FILTERS = ("tenant", "department", "user", "model", "status", "error_type")
"""SpanFilter fields rollup rows can answer; since and until are the cells themselves."""


def cube_answers(where: SpanFilter) -> bool:
    """Whether rollups hold what ``where`` asks: a bounded window, and filters they keep."""
    if where.since is None or where.until is None:
        return False
    other = set(SpanFilter.__dataclass_fields__) - {"since", "until", *CUBE_FILTERS}
    return all(getattr(where, name) is None for name in other)


def rollup_filters(table: Any, where: SpanFilter, columns: Sequence[str]) -> list[Any]:
    clauses = []
    for name in columns:
        value = getattr(where, name)
        if value is not None:
            clauses.append(table.c[name] == value)
    return clauses


def cube_filters(table: Any, where: SpanFilter, by: Sequence[str] = ()) -> list[Any]:
    """What picks a cube's rows for ``where`` grouped ``by``: its filters, and which kind.

    Every cube row is kept per user, status and error type, and once more summed over
    them (all three ``ANYONE``), the overview. A read takes one kind or the other, never
    both, or it would count each call twice: the detail when it groups or filters by
    one of the three, the overview otherwise.
    """
    return [*rollup_filters(table, where, CUBE_FILTERS), _kind(table, cube_shape(where, by)[1])]


def cube_shape(where: SpanFilter, by: Sequence[str] = ()) -> tuple[tuple[str, ...], bool]:
    """The :data:`CUBE_FILTERS` ``where`` sets, and whether a read grouped ``by`` takes the
    detail rows (see :func:`cube_filters`): what a read's statement depends on, not the
    filters' values."""
    filtered = tuple(name for name in CUBE_FILTERS if getattr(where, name) is not None)
    return filtered, any(name in by or name in filtered for name in DETAIL)


def bound_cube_filters(table: Any, filtered: Sequence[str], detail: bool) -> list[Any]:
    """:func:`cube_filters` of a :func:`cube_shape`, each value a bind parameter named as
    :func:`cube_params` gives it: one statement for every value."""
    return [
        *(table.c[name] == bindparam(f"where_{name}") for name in filtered),
        _kind(table, detail),
    ]


def cube_params(where: SpanFilter, filtered: Sequence[str]) -> dict[str, Any]:
    """The values of :func:`bound_cube_filters`' parameters for ``where``."""
    return {f"where_{name}": getattr(where, name) for name in filtered}


def _kind(table: Any, detail: bool) -> Any:
    return table.c.user != ANYONE if detail else table.c.user == ANYONE


DETAIL = ("user", "status", "error_type")
"""The cube's columns that only its detail rows hold (overview rows have ``ANYONE``)."""


def filter_values(where: SpanFilter) -> dict[str, Any]:
    return {name: getattr(where, name) for name in SpanFilter.__dataclass_fields__}


def edge_filter(where: SpanFilter, piece: Piece) -> SpanFilter:
    """``where`` narrowed to a raw piece's stretch of time."""
    return SpanFilter(
        **{**filter_values(where), "since": from_us(piece.lo), "until": from_us(piece.hi)}
    )
