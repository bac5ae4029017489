"""Latency, TTFT, queue and speed histograms (perf), and busy time per host (chargeback).

Histograms come from day and month rollups merged across cells (quarter hours too,
for all calls together and per model), raw spans at the window's edges; busy time
from per-minute unions of busy intervals.
"""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from ollama_meter.ledger._cells import (
    BIN_COLUMNS,
    BUSY_US,
    DAY_US,
    HISTOGRAM_KEY,
    Grain,
    Metric,
    busy_pieces,
    histogram_entries,
    merge_intervals,
    parse_intervals,
    slot_edges,
)
from ollama_meter.ledger._meta import ledger_zone, pruned_before
from ollama_meter.ledger._plan import (
    GROUP_COLUMNS,
    HISTOGRAM_GRAINS,
    RAW,
    Buckets,
    cube_params,
    decompose,
    edge_filter,
    plan_cells,
)
from ollama_meter.ledger._rollup import (
    BUSY as BUSY_TABLE,
    BUSY_CELLS,
    BUSY_GRAINS,
    EACH_MODEL,
    EVERYONE,
    HISTOGRAMS,
)
from ollama_meter.ledger._signed import Summing, cell_sums, signed_rows, signed_sums
from ollama_meter.ledger._span_rows import row_to_span
from ollama_meter.ledger._spans import SpanFilter, select_spans
from ollama_meter.ledger._spellings import group_values
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger._unreadable import named_sums, whole
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import NO_HOST

# -- histograms (perf) -------------------------------------------------------------------

Histograms = dict[tuple[Any, ...], dict[Metric, dict[int, int]]]
"""Per group (and time bucket, when asked): per metric, bin edge → calls."""

TIMING_COLUMNS = (
    SPANS.c.status,
    SPANS.c.latency_ns,
    SPANS.c.ttft_ns,
    SPANS.c.queue_ns,
    SPANS.c.output_tokens,
    SPANS.c.total_duration_ns,
    SPANS.c.load_duration_ns,
    SPANS.c.prompt_eval_duration_ns,
    SPANS.c.eval_duration_ns,
    SPANS.c.duration_source,
)


@dataclass
class HistogramResult:
    groups: Histograms
    pruned_before: int | None = None
    """Set (µs) when raw spans were needed from before the prune horizon: they are gone."""


@named_sums
def aggregate_histograms(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    buckets: Buckets = (),
    *,
    raw: bool = False,
) -> HistogramResult:
    """Latency, TTFT, queue and speed histograms per ``by`` group over the window.

    From day and month rollups when ``by`` and the filters fit their key (tenant,
    department, model); raw spans otherwise, and for the hours between a midnight of
    the ledger's zone and the window's ends. Grouped by model or by nothing, with no
    tenant or department asked for, from rows over all tenants and departments, which
    are kept per quarter hour too: raw spans only inside the quarter hours at the ends. With ``buckets`` each group's key
    ends with its time bucket's index.
    """
    fits = set(by) <= set(HISTOGRAM_KEY) and all(
        getattr(where, name) is None for name in ("user", "status", "error_type")
    )
    result = HistogramResult({})
    horizon = pruned_before(conn)
    if raw or RAW.get() or not fits or where.since is None or where.until is None:
        if horizon is not None and (where.since is None or to_us(where.since) < horizon):
            result.pruned_before = horizon
        _raw_histograms(conn, where, by, result, sign=1, buckets=buckets)
        return result
    # All calls together (no group, no filter on the key), and each model over all
    # tenants and departments, are also kept per quarter hour: a window's edges need no
    # raw spans but the quarter hour they fall in, and a month reads a row per model.
    overall = where.tenant is None and where.department is None and set(by) <= {"model"}
    each_model = overall and bool(by or where.model is not None)
    kind = "each_model" if each_model else "overall" if overall else "scoped"
    named = ("model",) if each_model else () if overall else HISTOGRAM_KEY
    filtered = tuple(name for name in named if getattr(where, name) is not None)
    grains = (*HISTOGRAM_GRAINS, Grain.QUARTER) if overall else HISTOGRAM_GRAINS
    zone = ledger_zone(conn)
    pieces = plan_cells(conn, where, buckets, grains, zone)
    if each_model and horizon is not None:
        # Quarter hours per model pruned before migration 0012 made them are not there:
        # before the horizon, they are read from raw spans (gone, and said so) as before.
        pieces = [
            replace(p, grain=None) if p.grain is Grain.QUARTER and p.lo < horizon else p
            for p in pieces
        ]
    bucketed = bool(buckets)
    statements = _histogram_statements(conn.dialect.name, tuple(by), kind, filtered)
    cells = [p for p in pieces if p.grain is not None]
    rows = signed_rows(conn, statements, cells, zone, cube_params(where, filtered))
    width = len(by)
    for row in rows:
        keys = tuple(row[1 : 1 + width])
        metric, decade = Metric(row[1 + width]), int(row[2 + width])
        group = (*keys, row[0]) if bucketed else keys
        bins = result.groups.setdefault(group, {}).setdefault(metric, {})
        edges = slot_edges(metric is Metric.SPEED, decade)
        for edge, calls in zip(edges, row[3 + width :], strict=True):
            if calls := whole(calls):  # a REAL 0.0 too: a bin of 'n/a' (``_plan.stored``)
                bins[edge] = bins.get(edge, 0) + calls
    for piece in pieces:
        if piece.grain is None:
            if horizon is not None and piece.lo < horizon:
                result.pruned_before = horizon
            _raw_histograms(
                conn, edge_filter(where, piece), by, result, sign=piece.sign,
                bucket=piece.bucket if bucketed else None,
            )  # fmt: skip
    for metrics in result.groups.values():
        for metric, bins in list(metrics.items()):
            metrics[metric] = {edge: n for edge, n in bins.items() if n}
    return result


@functools.lru_cache(maxsize=256)
def _histogram_statements(
    dialect: str, by: tuple[str, ...], kind: str, filtered: tuple[str, ...]
) -> Summing:
    """:func:`aggregate_histograms`' statements for one shape of read, built once (as
    ``_aggregate._cube_statements``): the cells and the filters' values are bind parameters.
    ``kind``: all calls together (``overall``), each model over all tenants and departments
    (``each_model``), or the rows of tenants and departments (``scoped``)."""
    c = HISTOGRAMS.c
    bound = [c[name] == bindparam(f"where_{name}") for name in filtered]
    if kind == "overall":  # never summed from the others
        filters = [c[name] == value for name, value in zip(HISTOGRAM_KEY, EVERYONE, strict=True)]
    elif kind == "each_model":
        filters = [c.tenant == EACH_MODEL[0], c.department == EACH_MODEL[1], *bound]
    else:
        filters = [*bound, c.tenant != EVERYONE[0]]
    groups = [*(c[name] for name in by), c.metric, c.decade]
    return cell_sums(dialect, HISTOGRAMS, groups, BIN_COLUMNS, filters)


def _raw_histograms(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    result: HistogramResult,
    *,
    sign: int,
    buckets: Buckets = (),
    bucket: int | None = None,
) -> None:
    keys = [GROUP_COLUMNS[name].label(f"k_{name}") for name in by]
    query = select(*keys, *TIMING_COLUMNS, SPANS.c.started_at).where(*where.clauses(conn))
    width = len(keys)
    starts = [start for start, _ in buckets]
    for call in conn.execute(query):
        group_key: tuple[Any, ...] = group_values(by, call[:width])
        if bucket is not None:
            group_key = (*group_key, bucket)
        elif buckets:
            index = bisect.bisect_right(starts, call.started_at) - 1
            if index < 0 or call.started_at >= buckets[index][1]:
                continue  # in no bucket: as in ``_raw_sums``
            group_key = (*group_key, index)
        group = result.groups.setdefault(group_key, {})
        for metric, edge in histogram_entries(call):
            bins = group.setdefault(metric, {})
            bins[edge] = bins.get(edge, 0) + sign


# -- busy time per host (chargeback) ----------------------------------------------------


@named_sums
def busy_union(
    conn: Connection, since: datetime, until: datetime, *, raw: bool = False
) -> tuple[int, int]:
    """(busy nanoseconds summed over hosts, number of hosts) in [since, until).

    A host's busy time is the union of its calls' busy intervals, so parallel calls
    count once; a host counts when it served a call that started in the window or
    was busy in it.
    """
    lo, hi = to_us(since), to_us(until)
    if raw or RAW.get():
        return _raw_busy(conn, lo, hi)
    c = BUSY_TABLE.c
    first = lo - lo % BUSY_US
    inner_lo = first if first == lo else first + BUSY_US
    inner_hi = hi - hi % BUSY_US
    hosts: set[str] = set()
    busy_us = 0
    if inner_lo < inner_hi:
        for host, (busy, calls) in _whole_minutes(conn, inner_lo, inner_hi).items():
            if (busy or calls) and host != NO_HOST:  # kept by an import before NO_HOST was none
                hosts.add(host)
                busy_us += busy
    # Minutes the window only partly covers (only where a local midnight is not on a minute,
    # as in Monrovia until 1972): clip their intervals. A minute's row says a call started in
    # it, not whether before or after the edge: the hosts of calls that started inside come
    # from the spans (a host whose only call ended before the window is none of its hosts).
    partial = {
        cell for cell, inside in ((first, first == lo), (inner_hi, inner_hi == hi)) if not inside
    }
    for cell in sorted(partial):
        query = select(c.host, c.intervals).where(c.start == cell // 10**6, c.host != NO_HOST)
        for host, intervals in conn.execute(query):
            clipped = [
                (max(a + cell, lo), min(b + cell, hi)) for a, b in parse_intervals(intervals)
            ]
            busy = sum(b - a for a, b in clipped if b > a)
            if busy:
                hosts.add(host)
                busy_us += busy
        started = select(SPANS.c.upstream_host).where(
            SPANS.c.upstream_host != NO_HOST,
            SPANS.c.started_at >= from_us(max(cell, lo)),
            SPANS.c.started_at < from_us(min(cell + BUSY_US, hi)),
        )
        hosts.update(conn.execute(started.distinct()).scalars())
    return busy_us * 1000, len(hosts)


def _whole_minutes(conn: Connection, lo: int, hi: int) -> dict[str, list[int]]:
    """Per host, busy µs and calls in the minutes of [lo, hi) (both on a minute).

    Whole days and months of the ledger's zone come from their cells, with signs (a
    month less the days past the window), the rest from the minutes: every cell is a
    run of whole quarter hours, so of whole minutes.
    """
    zone = ledger_zone(conn)
    pieces = decompose(lo, hi, BUSY_GRAINS, zone=zone)
    sums: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    cells = [p for p in pieces if p.grain is not None]
    for _, host, busy, calls in signed_sums(
        conn, BUSY_CELLS, cells, [BUSY_CELLS.c.host], ["busy_us", "calls"], [], zone
    ):
        sums[host][0] += whole(busy)
        sums[host][1] += whole(calls)
    c = BUSY_TABLE.c
    for piece in pieces:
        if piece.grain is None:
            query = (
                select(c.host, func.sum(c.busy_us), func.sum(c.calls))
                .where(c.start >= piece.lo // 10**6, c.start < piece.hi // 10**6)
                .group_by(c.host)
            )
            for host, busy, calls in conn.execute(query):
                sums[host][0] += piece.sign * whole(busy)
                sums[host][1] += piece.sign * whole(calls)
    return sums


def _raw_busy(conn: Connection, lo: int, hi: int) -> tuple[int, int]:
    query = select_spans(content=False).where(
        SPANS.c.started_at >= from_us(lo - DAY_US),
        SPANS.c.started_at < from_us(hi),
        SPANS.c.upstream_host != NO_HOST,
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
