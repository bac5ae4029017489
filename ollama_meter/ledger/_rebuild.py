"""Rebuilding rollups from raw spans (``ometer db rollup``), and once after a migration asks.

One write transaction per UTC day: the day's cells are deleted and recomputed
from its spans, so spans written meanwhile are counted once; then each month is
summed from its days. Days before the prune horizon keep their rollups: their
spans are gone.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, literal, or_, select

from ollama_meter.ledger._cells import (
    BIN_COLUMNS,
    DAY_US,
    DIMENSIONS,
    HISTOGRAM_KEY,
    MEASURES,
    Grain,
    busy_pieces,
    floor_cell,
    next_cell,
)
from ollama_meter.ledger._rollup import (
    BUSY,
    HISTOGRAMS,
    ROLLUPS,
    RollupDelta,
    get_meta,
    pruned_before,
    set_meta,
)
from ollama_meter.ledger._spans import row_to_span, select_spans
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger.models import SpanRow

log = logging.getLogger("ollama_meter.ledger")


def rebuild(
    write: Callable[[], Any],
    read: Callable[[], Any],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Recompute every rollup that raw spans can answer: all days from the prune horizon on.

    One write transaction per UTC day (the day's cells deleted and recomputed from
    its spans, so spans written meanwhile are counted once), then each month from
    its days. Days before the horizon keep their rollups: their spans are gone.
    ``write``/``read`` open transactions (``Ledger.write``/``Ledger.read``). Busy time
    of a call that started the day before is counted from the earlier day's spans,
    so calls must not last longer than a day. Returns the number of spans read.
    """
    with read() as conn:
        horizon = pruned_before(conn)
        bounds = []
        for column, table, extra in (
            (SpanRow.started_at, SpanRow.__table__, ()),
            (ROLLUPS.c.start, ROLLUPS, (ROLLUPS.c.grain == int(Grain.QUARTER),)),
        ):
            low, high = conn.execute(
                select(func.min(column), func.max(column)).select_from(table).where(*extra)
            ).one()
            if low is None:
                continue
            if isinstance(low, datetime):
                bounds += [to_us(low), to_us(high)]
            else:
                bounds += [low * 10**6, high * 10**6]
    total = 0
    if bounds:
        total = _rebuild_days(write, min(bounds), max(bounds), horizon, progress)
    with write() as conn:
        set_meta(conn, "rollups", "current")
    return total


def _rebuild_days(
    write: Callable[[], Any],
    low: int,
    high: int,
    horizon: int | None,
    progress: Callable[[int], None] | None,
) -> int:
    first = floor_cell(Grain.DAY, low)
    if horizon is not None:
        first = max(first, floor_cell(Grain.DAY, horizon + DAY_US - 1))
    last = floor_cell(Grain.DAY, high)
    total = 0
    months: set[int] = set()
    day: int | None = first
    while day is not None and day <= last:
        with write() as conn:
            count = _rebuild_day(conn, day)
            total += count
            # The next day with anything to redo; the day after one with calls always
            # (a call may have been busy past midnight).
            following = day + DAY_US if count else _next_day(conn, day + DAY_US)
        months.add(floor_cell(Grain.MONTH, day))
        if progress is not None:
            progress(day)
        day = following
    for month in sorted(months):
        with write() as conn:
            _rebuild_month(conn, month)
    return total


def _next_day(conn: Connection, after: int) -> int | None:
    """The first day from ``after`` on with spans or rollups (skips years of nothing at once)."""
    seconds = after // 10**6
    found = [
        conn.execute(select(func.min(SpanRow.started_at)).where(
            SpanRow.started_at >= from_us(after))).scalar(),
        conn.execute(select(func.min(ROLLUPS.c.start)).where(
            ROLLUPS.c.grain == int(Grain.QUARTER), ROLLUPS.c.start >= seconds)).scalar(),
        conn.execute(select(func.min(BUSY.c.start)).where(BUSY.c.start >= seconds)).scalar(),
    ]  # fmt: skip
    moments = [to_us(f) if isinstance(f, datetime) else f * 10**6 for f in found if f is not None]
    return floor_cell(Grain.DAY, min(moments)) if moments else None


def _rebuild_day(conn: Connection, day: int) -> int:
    start_s, end_s = day // 10**6, (day + DAY_US) // 10**6
    for table, grains in (
        (ROLLUPS, (Grain.QUARTER, Grain.DAY)),
        (HISTOGRAMS, (Grain.QUARTER, Grain.DAY)),
    ):
        conn.execute(
            delete(table).where(
                table.c.grain.in_([int(g) for g in grains]),
                table.c.start >= start_s,
                table.c.start < end_s,
            )
        )
    conn.execute(delete(BUSY).where(BUSY.c.start >= start_s, BUSY.c.start < end_s))
    delta = RollupDelta()
    count = 0
    # Today's spans, and yesterday's that were still busy after midnight.
    query = select_spans().where(
        SpanRow.started_at >= from_us(day - DAY_US),
        SpanRow.started_at < from_us(day + DAY_US),
        or_(SpanRow.started_at >= from_us(day), SpanRow.ended_at > from_us(day)),
    )
    for row in conn.execute(query):
        span = row_to_span(row)
        if to_us(span.started_at) >= day:
            delta.add(span)
            count += 1
        else:  # yesterday's call: only its busy time reaching into today counts here
            for cell, piece in busy_pieces(span):
                if cell >= day:
                    delta.busy[(cell, span.upstream_host)].append(piece)
    delta.busy = defaultdict(
        list, {key: value for key, value in delta.busy.items() if day <= key[0] < day + DAY_US}
    )
    delta.write(conn, months=False)  # each month is summed from its days afterwards
    return count


def _rebuild_month(conn: Connection, month: int) -> None:
    start_s, end_s = month // 10**6, next_cell(Grain.MONTH, month) // 10**6
    for table, keys, sums in (
        (ROLLUPS, DIMENSIONS, MEASURES),
        (HISTOGRAMS, (*HISTOGRAM_KEY, "metric", "decade"), BIN_COLUMNS),
    ):
        conn.execute(
            delete(table).where(
                table.c.grain == int(Grain.MONTH), table.c.start >= start_s, table.c.start < end_s
            )
        )
        days = (
            select(
                literal(int(Grain.MONTH)),
                literal(start_s),
                *(table.c[k] for k in keys),
                *(func.sum(table.c[s]) for s in sums),
            )
            .where(table.c.grain == int(Grain.DAY), table.c.start >= start_s, table.c.start < end_s)
            .group_by(*(table.c[k] for k in keys))
        )
        conn.execute(insert(table).from_select(["grain", "start", *keys, *sums], days))


def build_if_stale(ledger: Any) -> None:
    """Build the rollups a migration asked for (``ledger_meta.rollups = 'stale'``), once."""
    with ledger.read() as conn:
        if get_meta(conn, "rollups") != "stale":
            return
        empty = conn.execute(select(SpanRow.id).limit(1)).first() is None
    if empty:
        with ledger.write() as conn:
            set_meta(conn, "rollups", "current")
        return
    log.warning("building rollups for the spans already in %s (once)", ledger.display_url)
    count = rebuild(ledger.write, ledger.read)
    log.warning("rollups built from %d span(s)", count)
