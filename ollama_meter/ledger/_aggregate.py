"""Aggregates over a window: from rollups in a few rows, or from raw spans in one GROUP BY.

A window [a, b) is cut into pieces of whole rollup cells, coarsest first, with
signs: [a, b) = [a, A) + [A, B) + [B, b), where A and B are the month (then day,
then quarter-hour) boundaries nearest a and b, and a piece that runs backwards
(A before a) is subtracted. Every sum in a rollup is additive, so a November cut
at Berlin midnight is the UTC month of November, plus the quarter hours from
23:00 UTC on 31 October, less those from 23:00 UTC on 30 November: one month
row and eight quarter rows per group instead of thirty days of spans. What no
cell covers (an end not on a quarter hour) comes from raw spans, the open edge.

The raw path (``raw=True``, or every query inside :func:`raw_spans`) is the same
question asked of the spans themselves: the reference the tests hold rollups to,
and the benchmark's baseline. Time
buckets there are a CASE over precomputed UTC boundaries, which keeps the SQL
identical on SQLite and PostgreSQL and honours the configured zone exactly.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, func, literal, literal_column, select, union_all
from sqlalchemy.sql.elements import ColumnElement

from ollama_meter.ledger._rollup import (
    BIN_COLUMNS,
    BUSY_US,
    COLD_LOAD_NS,
    DAY_US,
    ERROR_STATUSES,
    HISTOGRAM_KEY,
    HISTOGRAMS,
    ROLLUPS,
    Grain,
    Metric,
    busy_pieces,
    floor_cell,
    histogram_entries,
    merge_intervals,
    next_cell,
    parse_intervals,
    pruned_before,
    slot_edge,
)
from ollama_meter.ledger._rollup import BUSY as BUSY_TABLE
from ollama_meter.ledger._spans import SpanFilter, row_to_span
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger.models import SpanRow

GROUP_COLUMNS: dict[str, ColumnElement[Any]] = {
    "tenant": SpanRow.__table__.c.tenant,
    "department": SpanRow.__table__.c.department,
    "user": func.coalesce(SpanRow.user, ""),
    "model": func.coalesce(SpanRow.response_model, SpanRow.request_model),
}
"""What reports group by, as raw span expressions; rollups store these very values."""

SUMS = ("requests", "input_tokens", "output_tokens", "busy_ns", "cost_total", "unpriced",
        "unpriced_tokens", "cold_loads", "cold_load_ns")  # fmt: skip
CUBE_GRAINS = (Grain.MONTH, Grain.DAY, Grain.QUARTER)
HISTOGRAM_GRAINS = (Grain.MONTH, Grain.DAY)
_MAX_GAP = {Grain.MONTH: DAY_US, Grain.DAY: DAY_US // 2, Grain.QUARTER: 450 * 10**6}
"""How far past an end a coarse cell may reach and be trimmed back with finer ones."""


_RAW: ContextVar[bool] = ContextVar("ometer_raw_spans", default=False)


@contextlib.contextmanager
def raw_spans() -> Iterator[None]:
    """Answer every aggregate in this block from raw spans, as if there were no rollups."""
    token = _RAW.set(True)
    try:
        yield
    finally:
        _RAW.reset(token)


@dataclass(frozen=True, slots=True)
class SpendRow:
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


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of a bucket: whole cells of ``grain`` (None: raw spans) in [lo, hi) µs, added or subtracted."""

    grain: Grain | None
    lo: int
    hi: int
    sign: int
    bucket: int


def _snap(grain: Grain, t: int, low_end: bool) -> int:
    floor = floor_cell(grain, t)
    if floor == t:
        return t
    ceil = next_cell(grain, floor)
    nearest = floor if t - floor <= ceil - t else ceil
    if abs(nearest - t) <= _MAX_GAP[grain]:
        return nearest
    return ceil if low_end else floor


def decompose(
    lo: int, hi: int, grains: Sequence[Grain], *, bucket: int = 0, sign: int = 1
) -> list[Piece]:
    """[lo, hi) as signed pieces of whole cells of ``grains`` (coarsest first), then raw spans."""
    if lo == hi:
        return []
    if lo > hi:
        return decompose(hi, lo, grains, bucket=bucket, sign=-sign)
    if not grains:
        return [Piece(None, lo, hi, sign, bucket)]
    grain, finer = grains[0], grains[1:]
    a, b = _snap(grain, lo, True), _snap(grain, hi, False)
    if a >= b:
        return decompose(lo, hi, finer, bucket=bucket, sign=sign)
    return [
        Piece(grain, a, b, sign, bucket),
        *decompose(lo, a, finer, bucket=bucket, sign=sign),
        *decompose(b, hi, finer, bucket=bucket, sign=sign),
    ]


def _buckets(where: SpanFilter, bucket_starts: Sequence[datetime]) -> list[tuple[int, int, int]]:
    """(index, lo, hi) in µs of each bucket's part of the window."""
    assert where.since is not None
    assert where.until is not None
    since, until = to_us(where.since), to_us(where.until)
    if not bucket_starts:
        return [(0, since, until)]
    starts = [to_us(s) for s in bucket_starts]
    out = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else until
        lo, hi = max(start, since), min(end, until)
        if lo < hi:
            out.append((index, lo, hi))
    return out


def plan(
    where: SpanFilter, bucket_starts: Sequence[datetime], grains: Sequence[Grain]
) -> list[Piece]:
    return [
        piece
        for index, lo, hi in _buckets(where, bucket_starts)
        for piece in decompose(lo, hi, grains, bucket=index)
    ]


def _cells(pieces: Iterable[Piece]) -> tuple[dict[int, list[tuple[int, int]]], list[Any]]:
    """Cell start (s) → [(bucket, sign)], and the SQL ranges covering those cells."""
    cells: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
    spans: list[tuple[int, int]] = []
    for piece in pieces:
        assert piece.grain is not None
        cell = piece.lo
        while cell < piece.hi:
            cells[cell // 10**6].append((piece.bucket, piece.sign))
            cell = next_cell(piece.grain, cell)
        spans.append((piece.lo // 10**6, piece.hi // 10**6))
    return cells, merge_intervals(spans)


def _grouped_in_ranges(
    conn: Connection,
    table: Any,
    grain: Grain,
    ranges: Sequence[tuple[int, int]],
    groups: Sequence[Any],
    sums: Sequence[Any],
    filters: Sequence[Any],
) -> Iterator[Any]:
    """Rows of ``SELECT groups, sums ... GROUP BY groups`` over cells in ``ranges``.

    One SELECT per range, joined by UNION ALL: each is a range scan of the primary key
    (grain, start), where an OR of ranges would scan every cell of the grain. The
    ranges are disjoint and ``start`` is among the groups, so no row is split.
    """
    for first in range(0, len(ranges), _UNION_LIMIT):
        parts = [
            select(*groups, *sums)
            .where(table.c.grain == int(grain), table.c.start >= lo, table.c.start < hi, *filters)
            .group_by(*groups)
            for lo, hi in ranges[first : first + _UNION_LIMIT]
        ]
        yield from conn.execute(parts[0] if len(parts) == 1 else union_all(*parts))


_UNION_LIMIT = 200
"""SELECTs per UNION ALL: SQLite allows 500."""


_CUBE_FILTERS = ("tenant", "department", "user", "model", "status", "error_type")
"""SpanFilter fields rollup rows can answer; since and until are the cells themselves."""


def _cube_answers(where: SpanFilter) -> bool:
    """Whether rollups hold what ``where`` asks: a bounded window, and filters they keep."""
    if where.since is None or where.until is None:
        return False
    other = set(SpanFilter.__dataclass_fields__) - {"since", "until", *_CUBE_FILTERS}
    return all(getattr(where, name) is None for name in other)


def _rollup_filters(table: Any, where: SpanFilter, columns: Sequence[str]) -> list[Any]:
    clauses = []
    for name in columns:
        value = getattr(where, name)
        if value is not None:
            clauses.append(table.c[name] == value)
    return clauses


class _Sums:
    """Signed sums per (bucket, keys, currency), folded from rollup or raw rows alike."""

    def __init__(self) -> None:
        self.rows: defaultdict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 9)

    def add(self, bucket: int, keys: tuple[str, ...], currency: str, status: str,
            values: Sequence[Any], sign: int) -> None:  # fmt: skip
        (requests, input_tokens, output_tokens, busy, cost, unpriced, unpriced_tokens,
         cold, cold_ns) = (int(v or 0) for v in values)  # fmt: skip
        row = self.rows[(bucket, keys, currency)]
        row[0] += sign * requests
        row[1] += sign * (requests if status in ERROR_STATUSES else 0)
        row[2] += sign * input_tokens
        row[3] += sign * output_tokens
        row[4] += sign * busy
        row[5] += sign * cost
        # Unpriced usage, not unpriced failures: a call that consumed nothing costs nothing.
        row[6] += sign * (unpriced if status == "ok" else unpriced_tokens)
        row[7] += sign * cold
        row[8] += sign * cold_ns

    def result(self) -> list[SpendRow]:
        return [
            SpendRow(keys, bucket, currency, *values)
            for (bucket, keys, currency), values in self.rows.items()
            if values[0]  # a group seen only in cells that were subtracted again
        ]


def aggregate_spend(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    bucket_starts: Sequence[datetime] = (),
    *,
    raw: bool = False,
) -> list[SpendRow]:
    """Sums per (``by`` columns, time bucket, currency) over the window ``where`` gives."""
    sums = _Sums()
    if raw or _RAW.get() or not _cube_answers(where):
        _raw_sums(conn, where, by, bucket_starts, sums, sign=1, bucket=None)
        return sums.result()
    pieces = plan(where, bucket_starts, CUBE_GRAINS)
    _cube_sums(conn, pieces, where, by, sums)
    for piece in pieces:
        if piece.grain is None:
            edge = SpanFilter(**{**_filter_values(where), "since": from_us(piece.lo),
                                 "until": from_us(piece.hi)})  # fmt: skip
            _raw_sums(conn, edge, by, (), sums, sign=piece.sign, bucket=piece.bucket)
    return sums.result()


def _filter_values(where: SpanFilter) -> dict[str, Any]:
    return {name: getattr(where, name) for name in SpanFilter.__dataclass_fields__}


def _cube_sums(
    conn: Connection, pieces: Sequence[Piece], where: SpanFilter, by: Sequence[str], sums: _Sums
) -> None:
    """Fold the rollup rows of every grain's pieces into ``sums``, read in one statement.

    One statement is one snapshot, also on PostgreSQL under READ COMMITTED: a month
    cell and the quarter hours subtracted from it can never disagree about a span
    another process committed in between.
    """
    c = ROLLUPS.c
    groups = [c.start, *(c[name] for name in by), c.currency, c.status]
    measures = [func.sum(c[name]) for name in SUMS]
    filters = _rollup_filters(ROLLUPS, where, _CUBE_FILTERS)
    cells: dict[int, dict[int, list[tuple[int, int]]]] = {}
    parts = []
    for grain in CUBE_GRAINS:
        chosen = [p for p in pieces if p.grain is grain]
        if not chosen:
            continue
        cells[int(grain)], ranges = _cells(chosen)
        parts += [
            select(literal(int(grain)).label("g"), *groups, *measures)
            .where(c.grain == int(grain), c.start >= lo, c.start < hi, *filters)
            .group_by(*groups)
            for lo, hi in ranges
        ]
    if not parts:
        return
    if len(parts) > _UNION_LIMIT:  # a window of years by day: more than SQLite takes at once
        rows: Iterable[Any] = (
            row
            for first in range(0, len(parts), _UNION_LIMIT)
            for row in conn.execute(union_all(*parts[first : first + _UNION_LIMIT]))
        )
    else:
        rows = conn.execute(parts[0] if len(parts) == 1 else union_all(*parts))
    width = len(by)
    for row in rows:
        keys = tuple(row[2 : 2 + width])
        currency, status = row[2 + width], row[3 + width]
        values = row[4 + width :]
        for bucket, sign in cells[row[0]].get(row[1], ()):
            sums.add(bucket, keys, currency, status, values, sign)


def _raw_sums(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    bucket_starts: Sequence[datetime],
    sums: _Sums,
    *,
    sign: int,
    bucket: int | None,
) -> None:
    keys = [GROUP_COLUMNS[name].label(f"k_{name}") for name in by]
    zero = literal(0)
    if bucket_starts:
        # Spans are filtered to the window, so every span falls in one bucket;
        # the boundaries are searched from the newest down.
        whens = [
            (SpanRow.started_at >= start, literal(index))
            for index, start in reversed(list(enumerate(bucket_starts)))
        ]
        bucket_column: ColumnElement[Any] = case(*whens, else_=zero).label("bucket")
    else:
        bucket_column = zero.label("bucket")
    load = func.coalesce(SpanRow.load_duration_ns, zero)
    cold = load >= COLD_LOAD_NS
    unpriced = SpanRow.unpriced == True  # noqa: E712
    query = (
        select(
            *keys,
            bucket_column,
            SpanRow.currency,
            SpanRow.status,
            func.count(),
            func.sum(SpanRow.input_tokens),
            func.sum(SpanRow.output_tokens),
            func.sum(
                func.coalesce(SpanRow.prompt_eval_duration_ns, zero)
                + func.coalesce(SpanRow.eval_duration_ns, zero)
            ),
            func.sum(SpanRow.cost_total),
            func.sum(case((unpriced, 1), else_=zero)),
            func.sum(
                case((unpriced & (SpanRow.input_tokens + SpanRow.output_tokens > 0), 1), else_=zero)
            ),
            func.sum(case((cold, 1), else_=zero)),
            func.sum(case((cold, load), else_=zero)),
        )
        .where(*where.clauses())
        # By output name: PostgreSQL cannot match bound parameters in SELECT and GROUP BY.
        .group_by(
            *(literal_column(k.name) for k in keys),
            literal_column("bucket"),
            SpanRow.currency,
            SpanRow.status,
        )
    )
    width = len(keys)
    for row in conn.execute(query):
        sums.add(
            int(row[width]) if bucket is None else bucket,
            tuple(str(v) for v in row[:width]),
            row[width + 1],
            row[width + 2],
            row[width + 3 :],
            sign,
        )


# -- failures (the dashboard) ------------------------------------------------------------


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
    if raw or _RAW.get() or not _cube_answers(where):
        query = (
            select(SpanRow.status, SpanRow.error_type, func.count())
            .where(*where.clauses(), SpanRow.status != "ok")
            .group_by(SpanRow.status, SpanRow.error_type)
        )
        for status, error_type, requests in conn.execute(query):
            counts[(status, error_type)] += int(requests)
    else:
        pieces = plan(where, (), CUBE_GRAINS)
        for grain in CUBE_GRAINS:
            chosen = [p for p in pieces if p.grain is grain]
            if not chosen:
                continue
            cells, ranges = _cells(chosen)
            c = ROLLUPS.c
            rows = _grouped_in_ranges(
                conn,
                ROLLUPS,
                grain,
                ranges,
                [c.start, c.status, c.error_type],
                [func.sum(c.requests)],
                [*_rollup_filters(ROLLUPS, where, _CUBE_FILTERS), c.status != "ok"],
            )
            for start, status, error_type, requests in rows:
                for _, sign in cells.get(start, ()):
                    counts[(status, error_type or None)] += sign * int(requests)
        for piece in pieces:
            if piece.grain is None:
                edge = SpanFilter(**{**_filter_values(where), "since": from_us(piece.lo),
                                     "until": from_us(piece.hi)})  # fmt: skip
                for failure in aggregate_failures(conn, edge, raw=True):
                    counts[(failure.status, failure.error_type)] += piece.sign * failure.requests
    return [FailureCount(status, error_type, n) for (status, error_type), n in counts.items() if n]


# -- histograms (perf) -------------------------------------------------------------------

Histograms = dict[tuple[Any, ...], dict[Metric, dict[int, int]]]
"""Per group (and time bucket, when asked): per metric, bin edge → calls."""

TIMING_COLUMNS = (
    SpanRow.status,
    SpanRow.latency_ns,
    SpanRow.ttft_ns,
    SpanRow.output_tokens,
    SpanRow.total_duration_ns,
    SpanRow.load_duration_ns,
    SpanRow.prompt_eval_duration_ns,
    SpanRow.eval_duration_ns,
    SpanRow.duration_source,
)


@dataclass
class HistogramResult:
    groups: Histograms
    pruned_before: int | None = None
    """Set (µs) when raw spans were needed from before the prune horizon: they are gone."""


def aggregate_histograms(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    bucket_starts: Sequence[datetime] = (),
    *,
    raw: bool = False,
) -> HistogramResult:
    """Latency, TTFT, queue and speed histograms per ``by`` group over the window.

    From day and month rollups when ``by`` and the filters fit their key (tenant,
    department, model); raw spans otherwise, and for the hours between a UTC
    midnight and the window's ends. With ``bucket_starts`` each group's key ends with
    its time bucket's index.
    """
    fits = set(by) <= set(HISTOGRAM_KEY) and all(
        getattr(where, name) is None for name in ("user", "status", "error_type")
    )
    result = HistogramResult({})
    horizon = pruned_before(conn)
    if raw or _RAW.get() or not fits or where.since is None or where.until is None:
        if horizon is not None and (where.since is None or to_us(where.since) < horizon):
            result.pruned_before = horizon
        _raw_histograms(conn, where, by, result, sign=1, bucket_starts=bucket_starts)
        return result
    pieces = plan(where, bucket_starts, HISTOGRAM_GRAINS)
    bucketed = bool(bucket_starts)
    c = HISTOGRAMS.c
    for grain in HISTOGRAM_GRAINS:
        chosen = [p for p in pieces if p.grain is grain]
        if not chosen:
            continue
        cells, ranges = _cells(chosen)
        rows = _grouped_in_ranges(
            conn,
            HISTOGRAMS,
            grain,
            ranges,
            [c.start, *(c[name] for name in by), c.metric, c.decade],
            [func.sum(c[name]) for name in BIN_COLUMNS],
            _rollup_filters(HISTOGRAMS, where, ("tenant", "department", "model")),
        )
        width = len(by)
        for row in rows:
            keys = tuple(row[1 : 1 + width])
            metric, decade = Metric(row[1 + width]), int(row[2 + width])
            counts = [(index, int(n)) for index, n in enumerate(row[3 + width :]) if n]
            for bucket, sign in cells.get(row[0], ()):
                group = (*keys, bucket) if bucketed else keys
                bins = result.groups.setdefault(group, {}).setdefault(metric, {})
                for index, calls in counts:
                    edge = slot_edge(metric, decade, index)
                    bins[edge] = bins.get(edge, 0) + sign * calls
    for piece in pieces:
        if piece.grain is None:
            if horizon is not None and piece.lo < horizon:
                result.pruned_before = horizon
            edge_filter = SpanFilter(**{**_filter_values(where), "since": from_us(piece.lo),
                                        "until": from_us(piece.hi)})  # fmt: skip
            _raw_histograms(
                conn, edge_filter, by, result, sign=piece.sign,
                bucket=piece.bucket if bucketed else None,
            )  # fmt: skip
    for metrics in result.groups.values():
        for metric, bins in list(metrics.items()):
            metrics[metric] = {edge: n for edge, n in bins.items() if n}
    return result


def _raw_histograms(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    result: HistogramResult,
    *,
    sign: int,
    bucket_starts: Sequence[datetime] = (),
    bucket: int | None = None,
) -> None:
    keys = [GROUP_COLUMNS[name].label(f"k_{name}") for name in by]
    query = select(*keys, *TIMING_COLUMNS, SpanRow.started_at).where(*where.clauses())
    width = len(keys)
    for call in conn.execute(query):
        group_key: tuple[Any, ...] = tuple(str(v) for v in call[:width])
        if bucket is not None:
            group_key = (*group_key, bucket)
        elif bucket_starts:
            index = max(bisect.bisect_right(bucket_starts, call.started_at) - 1, 0)
            group_key = (*group_key, index)
        group = result.groups.setdefault(group_key, {})
        for metric, edge in histogram_entries(call):
            bins = group.setdefault(metric, {})
            bins[edge] = bins.get(edge, 0) + sign


# -- busy time per host (chargeback) ----------------------------------------------------


def busy_union(
    conn: Connection, since: datetime, until: datetime, *, raw: bool = False
) -> tuple[int, int]:
    """(busy nanoseconds summed over hosts, number of hosts) in [since, until).

    A host's busy time is the union of its calls' busy intervals, so parallel calls
    count once; a host counts when it served a call that started in the window or
    was busy in it.
    """
    lo, hi = to_us(since), to_us(until)
    if raw or _RAW.get():
        return _raw_busy(conn, lo, hi)
    c = BUSY_TABLE.c
    first = lo - lo % BUSY_US
    inner_lo = first if first == lo else first + BUSY_US
    inner_hi = hi - hi % BUSY_US
    hosts: set[str] = set()
    busy_us = 0
    if inner_lo < inner_hi:
        query = (
            select(c.host, func.sum(c.busy_us))
            .where(c.start >= inner_lo // 10**6, c.start < inner_hi // 10**6)
            .group_by(c.host)
        )
        for host, total in conn.execute(query):
            hosts.add(host)
            busy_us += int(total or 0)
    # Minutes the window only partly covers (never at a local midnight): clip.
    partial = {
        cell for cell, inside in ((first, first == lo), (inner_hi, inner_hi == hi)) if not inside
    }
    for cell in sorted(partial):
        query = select(c.host, c.intervals).where(c.start == cell // 10**6)
        for host, intervals in conn.execute(query):
            hosts.add(host)
            clipped = [
                (max(a + cell, lo), min(b + cell, hi)) for a, b in parse_intervals(intervals)
            ]
            busy_us += sum(b - a for a, b in clipped if b > a)
    return busy_us * 1000, len(hosts)


def _raw_busy(conn: Connection, lo: int, hi: int) -> tuple[int, int]:
    query = select(SpanRow).where(
        SpanRow.started_at >= from_us(lo - DAY_US), SpanRow.started_at < from_us(hi)
    )
    per_host: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    hosts: set[str] = set()
    for row in conn.execute(query):
        span = row_to_span(row)
        if to_us(span.started_at) >= lo:
            hosts.add(span.upstream_host)
        for cell, (a, b) in busy_pieces(span):
            begin, end = max(cell + a, lo), min(cell + b, hi)
            if end > begin:
                hosts.add(span.upstream_host)
                per_host[span.upstream_host].append((begin, end))
    busy = sum(b - a for intervals in per_host.values() for a, b in merge_intervals(intervals))
    return busy * 1000, len(hosts)
