"""Sums and failure counts over a window: from rollups in a few rows, or raw spans in one GROUP BY.

How a window is cut into rollup cells and raw edges is :mod:`._plan`'s job. The
raw path (``raw=True``, or every query inside :func:`raw_spans`) is the same
question asked of the spans themselves: the reference the tests hold rollups to,
and the benchmark's baseline. Time buckets there are a CASE over precomputed UTC
boundaries, which keeps the SQL identical on SQLite and PostgreSQL and honours
the configured zone exactly.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, case, func, literal, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement

from ollama_meter.ledger._cells import COLD_LOAD_NS, ERROR_STATUSES, Grain
from ollama_meter.ledger._meta import ledger_zone, pruned_before
from ollama_meter.ledger._plan import (
    CUBE_GRAINS,
    GROUP_COLUMNS,
    RAW,
    Buckets,
    Piece,
    bound_cube_filters,
    cube_answers,
    cube_filters,
    cube_params,
    cube_shape,
    decompose,
    edge_filter,
    held_runs,
    plan_cells,
    raw_spans,
)
from ollama_meter.ledger._rollup import MOST, ROLLUPS
from ollama_meter.ledger._signed import (
    Summing,
    cell_sums,
    grouped_sums,
    signed_rows,
    signed_sums,
    stored,
)
from ollama_meter.ledger._spans import SpanFilter
from ollama_meter.ledger._spellings import group_values
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger._unreadable import named_sums, whole
from ollama_meter.ledger.models import SPANS

log = logging.getLogger("ollama_meter.ledger")


@dataclass(frozen=True, slots=True)
class SpendSums:
    """One group's sums. ``bucket`` indexes the time buckets given, or is 0 without them."""

    keys: tuple[str, ...]
    bucket: int
    currency: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    gpu_ns: int
    cost: int
    unpriced_requests: int
    cold_loads: int = 0
    cold_load_ns: int = 0
    capped: bool = field(default=False, kw_only=True)
    """A rollup cell of the group holds a sum stopped at :data:`MOST` and the spans behind it
    were pruned: its sums are the cap, less than the calls spent (see ``_rollup``)."""


def capped_note(whose: str, figure: str) -> str:
    """What every output says of a sum that is the cap (:attr:`SpendSums.capped`): ``whose``
    (``the spend of acme/sales (USD)``) and the ``figure`` shown for it (``its cost``)."""
    return (
        f"{whose} passed the largest sum the ledger's rollups hold (9223372036854.775807) and "
        f"the spans of those calls were pruned: {figure} is that cap, a lower bound, less than "
        "was spent"
    )


class _Sums:
    """Signed sums per (bucket, keys, currency), folded from rollup or raw rows alike."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, ...], list[int]] = {}
        self.capped: set[tuple[Any, ...]] = set()

    def add(
        self, bucket: int, keys: tuple[str, ...], currency: str, sign: int, values: Sequence[Any]
    ) -> None:
        """Add sums in :class:`SpendSums` order (calls, errors, tokens in and out, busy, cost,
        unpriced calls, cold loads and their time)."""
        signed = [sign * whole(value) for value in values]
        row = self.rows.setdefault((bucket, keys, currency), signed)
        if row is not signed:
            row[:] = map(operator.add, row, signed)

    def result(self) -> list[SpendSums]:
        found = [
            SpendSums(keys, bucket, currency, *values)
            for (bucket, keys, currency), values in self.rows.items()
            if values[0]  # a group seen only in cells that were subtracted again
        ]
        if not self.capped:
            return found
        return [
            replace(s, capped=True) if (s.bucket, s.keys, s.currency) in self.capped else s
            for s in found
        ]


@named_sums
def aggregate_spend(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    buckets: Buckets = (),
    *,
    raw: bool = False,
) -> list[SpendSums]:
    """Sums per (``by`` columns, time bucket, currency) over the window ``where`` gives;
    LedgerError naming the row when one holds no whole number where a sum needs one."""
    sums = _Sums()
    if raw or RAW.get() or not cube_answers(where):
        _raw_sums(conn, where, by, buckets, sums, sign=1, bucket=None)
        return sums.result()
    zone = ledger_zone(conn)
    pieces = plan_cells(conn, where, buckets, CUBE_GRAINS, zone)
    if not _cube_sums(conn, pieces, where, by, sums, zone):
        # A cell stopped at the cap holds less than its spans: they give the exact sums.
        if _spans_kept(conn, where):
            exact = _Sums()
            _raw_sums(conn, where, by, buckets, exact, sign=1, bucket=None)
            return exact.result()
        log.warning(
            "a sum in %s..%s passed the largest 64-bit integer in the rollups and the spans "
            "behind it were pruned: it is shown as at most 9223372036854.775807",
            where.since,
            where.until,
        )
    for piece in pieces:
        if piece.grain is None:
            edge = edge_filter(where, piece)
            _raw_sums(conn, edge, by, (), sums, sign=piece.sign, bucket=piece.bucket)
    return sums.result()


def _cube_sums(
    conn: Connection,
    pieces: Sequence[Piece],
    where: SpanFilter,
    by: Sequence[str],
    sums: _Sums,
    zone: tzinfo | None,
) -> bool:
    """Fold the rollup rows of the pieces' cells into ``sums`` (see ``signed_sums``); False
    when one of the cells holds a sum stopped at :data:`MOST` (a write's cap), which the
    sums then hold in place of more."""
    filtered, detail = cube_shape(where, by)
    statements = _cube_statements(conn.dialect.name, tuple(by), filtered, detail)
    cells = [p for p in pieces if p.grain is not None]
    rows = signed_rows(conn, statements, cells, zone, cube_params(where, filtered))
    width, exact = len(by), True
    for row in rows:
        bucket, keys, currency = row[0], tuple(row[1 : 1 + width]), row[1 + width]
        sums.add(bucket, keys, currency, 1, row[2 + width : -1])
        if row[-1]:
            sums.capped.add((bucket, keys, currency))
            exact = False
    return exact


@functools.lru_cache(maxsize=256)
def _cube_statements(
    dialect: str, by: tuple[str, ...], filtered: tuple[str, ...], detail: bool
) -> Summing:
    """:func:`_cube_sums`' statements for one shape of read (``cube_shape``), built once: the
    cells and the filters' values are bind parameters. A spend read (a budget renewal's, a
    report's) built them each time: 3.7 ms of CPU on a 20,000-span ledger, the query 0.1 ms."""
    c = ROLLUPS.c
    capped = [
        (value >= MOST) | (value <= -MOST)
        for value in (stored(dialect, c[name]) for name in CAPPABLE)
    ]
    return cell_sums(
        dialect,
        ROLLUPS,
        [*(c[name] for name in by), c.currency],
        SUMMED,
        bound_cube_filters(ROLLUPS, filtered, detail),
        unsigned=[case((or_(*capped), 1), else_=0)],
    )


CAPPABLE = ("input_tokens", "output_tokens", "busy_ns", "cost_total", "cold_load_ns")
"""Measures a cell may sum past :data:`MOST` (each call's are bounded; a cell's calls are not).
A count of calls never gets there."""


def _spans_kept(conn: Connection, where: SpanFilter) -> bool:
    """Whether every raw span of the window ``where`` is still in the ledger (none pruned)."""
    horizon = pruned_before(conn)
    return horizon is None or (where.since is not None and to_us(where.since) >= horizon)


SUMMED = (
    "requests", "errors", "input_tokens", "output_tokens", "busy_ns", "cost_total",
    "unpriced_usage", "cold_loads", "cold_load_ns",
)  # fmt: skip
"""The measures summed, in :class:`SpendSums` order: rollup columns, or :func:`span_measures`."""


@functools.cache
def span_measures() -> SimpleNamespace:
    """One raw span as the rollup measures it adds to (``_cells.measures_of`` in SQL). Built
    once: the same expressions each time, and building them took a millisecond of each sum
    read from raw spans (2.7 s of tests/budgets/test_gate_model.py's 23 s on PostgreSQL)."""
    zero, one = literal(0), literal(1)
    load = func.coalesce(SPANS.c.load_duration_ns, zero)
    cold = load >= COLD_LOAD_NS
    unpriced = SPANS.c.unpriced == True  # noqa: E712
    # Not input + output > 0: the columns are 32-bit on PostgreSQL, and their sum overflowed
    # ("integer out of range") for a call of 2**31 - 1 tokens in and any out.
    used = unpriced & ((SPANS.c.input_tokens > 0) | (SPANS.c.output_tokens > 0))
    return SimpleNamespace(
        requests=one,
        errors=case((SPANS.c.status.in_(sorted(ERROR_STATUSES)), one), else_=zero),
        input_tokens=SPANS.c.input_tokens,
        output_tokens=SPANS.c.output_tokens,
        busy_ns=func.coalesce(SPANS.c.prompt_eval_duration_ns, zero)
        + func.coalesce(SPANS.c.eval_duration_ns, zero),
        cost_total=SPANS.c.cost_total,
        unpriced_usage=case(
            (SPANS.c.status == "ok", case((unpriced, one), else_=zero)),
            (used, one),
            else_=zero,
        ),
        cold_loads=case((cold, one), else_=zero),
        cold_load_ns=case((cold, load), else_=zero),
    )


def _raw_sums(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    buckets: Buckets,
    sums: _Sums,
    *,
    sign: int,
    bucket: int | None,
) -> None:
    keys = [GROUP_COLUMNS[name].label(f"k_{name}") for name in by]
    zero = literal(0)
    measures = span_measures()
    if buckets:
        # A span in no bucket (a call recorded after the buckets were built from the days
        # that held calls) is in no row, as the rollups' cells of no bucket are not read.
        whens = [
            ((SPANS.c.started_at >= start) & (SPANS.c.started_at < end), literal(index))
            for index, (start, end) in enumerate(buckets)
        ]
        bucket_column: ColumnElement[Any] = case(*whens, else_=literal(-1)).label("bucket")
    else:
        bucket_column = zero.label("bucket")
    rows = grouped_sums(
        conn,
        [*keys, bucket_column, SPANS.c.currency],
        [getattr(measures, name) for name in SUMMED],
        filters=where.clauses(conn),
        # By output name: PostgreSQL cannot match bound parameters in SELECT and GROUP BY.
        group_by=[
            *(literal_column(k.name) for k in keys),
            literal_column("bucket"),
            SPANS.c.currency,
        ],
    )
    width = len(keys)
    for row in rows:
        if int(row[width]) < 0:
            continue
        sums.add(
            int(row[width]) if bucket is None else bucket,
            group_values(by, row[:width]),
            row[width + 1],
            sign,
            row[width + 2 :],
        )


def held_stretches(
    conn: Connection, since: datetime, until: datetime, *, months: bool = False
) -> list[tuple[datetime, datetime]]:
    """The runs of the ledger's days (or months) in which calls started that reach into
    [since, until), in order: where a report's buckets can hold calls (see ``held_cells``)."""
    grain = Grain.MONTH if months else Grain.DAY
    runs = held_runs(conn, grain, to_us(since), to_us(until), ledger_zone(conn))
    return [(from_us(lo), from_us(hi)) for lo, hi in runs]


# -- failures (the dashboard) ------------------------------------------------------------

FAILURE_KEY = ("status", "error_type")


@dataclass(frozen=True, slots=True)
class FailureCount:
    """How many calls ended with one (status, error type), e.g. ``("error", "timeout")``."""

    status: str
    error_type: str | None
    requests: int


def aggregate_failures(
    conn: Connection, where: SpanFilter, *, raw: bool = False
) -> list[FailureCount]:
    """Calls that did not end ``ok``, counted per (status, error type)."""
    counts: defaultdict[tuple[str, str | None], int] = defaultdict(int)
    if raw or RAW.get() or not cube_answers(where):
        query = (
            select(SPANS.c.status, SPANS.c.error_type, func.count())
            .where(*where.clauses(conn), SPANS.c.status != "ok")
            .group_by(SPANS.c.status, SPANS.c.error_type)
        )
        for status, error_type, requests in conn.execute(query):
            # An empty error type (an import can hold one) is none, as the rollups keep it.
            counts[(status, error_type or None)] += int(requests)
    else:
        zone = ledger_zone(conn)
        pieces = plan_cells(conn, where, (), CUBE_GRAINS, zone)
        c = ROLLUPS.c
        rows = signed_sums(
            conn,
            ROLLUPS,
            [p for p in pieces if p.grain is not None],
            [c[name] for name in FAILURE_KEY],
            ["requests"],
            [*cube_filters(ROLLUPS, where, FAILURE_KEY), c.status != "ok"],
            zone,
        )
        for _, status, error_type, requests in rows:
            counts[(status, error_type or None)] += int(requests)
        for piece in pieces:
            if piece.grain is None:
                for failure in aggregate_failures(conn, edge_filter(where, piece), raw=True):
                    counts[(failure.status, failure.error_type)] += piece.sign * failure.requests
    return [FailureCount(status, error_type, n) for (status, error_type), n in counts.items() if n]


__all__ = [
    "CUBE_GRAINS",
    "FailureCount",
    "SpendSums",
    "aggregate_failures",
    "aggregate_spend",
    "decompose",
    "raw_spans",
]


class ScopeSpend(dict[tuple[str, str, str], int]):
    """Spend per (tenant, department, currency); ``capped``: the scopes whose sum is the
    rollups' cap with the spans behind it pruned (a lower bound, see ``SpendSums.capped``)."""

    capped: frozenset[tuple[str, str, str]] = frozenset()


def spend_by_scope(conn: Connection, start: datetime, end: datetime) -> ScopeSpend:
    """Settled spend per (tenant, department, currency) in [start, end), from rollups."""
    where = SpanFilter(since=start, until=end)
    rows = aggregate_spend(conn, where, ["tenant", "department"])
    found = ScopeSpend(((row.keys[0], row.keys[1], row.currency), row.cost) for row in rows)
    found.capped = frozenset((r.keys[0], r.keys[1], r.currency) for r in rows if r.capped)
    return found
