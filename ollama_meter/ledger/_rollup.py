"""Rollups: the ledger's sums, kept as spans arrive, so answers do not grow with the ledger.

Every span that is inserted adds to three tables, in the same transaction:

- ``rollups``: sums (calls, tokens, busy and load time, each cost part, unpriced
  calls, cold loads) per cell and per (tenant, department, user, model, currency,
  status, error type). Cells are quarter hours, UTC days and UTC months, so any
  window whose ends fall on a quarter hour (every local midnight of every time
  zone in use) is answered exactly from a few rows (see ``_aggregate``).
- ``rollup_histograms``: per UTC day and month and (tenant, department, model),
  how many calls fell in each bin of latency, time to first token, queue time and
  generation speed, so percentiles can be merged (:func:`duration_bin`).
- ``rollup_busy``: per minute and upstream host, the union of the calls' busy
  intervals, so chargeback's utilisation is exact without a scan.

Only spans the insert really added count (re-recording an id adds nothing), the
cell is the span's own start time (a span that arrives a month late lands in its
month), and upserts add to what is there (``x = x + excluded.x``), so several
processes can write at once. ``ometer db rollup`` (:func:`rebuild`) recomputes
them from raw spans. Money stays integer micro-units throughout.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from enum import IntEnum
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger.models import (
    ROLLUP_HISTOGRAMS,
    LedgerMetaRow,
    RollupBusyRow,
    RollupRow,
    SpanRow,
)
from ollama_meter.records import SpanRecord

log = logging.getLogger("ollama_meter.ledger")

ROLLUPS: Table = RollupRow.__table__  # type: ignore[assignment]
HISTOGRAMS: Table = ROLLUP_HISTOGRAMS
BUSY: Table = RollupBusyRow.__table__  # type: ignore[assignment]
META: Table = LedgerMetaRow.__table__  # type: ignore[assignment]


class Grain(IntEnum):
    """How long a rollup cell is. Each is a union of cells of the finer ones."""

    QUARTER = 0
    DAY = 1
    MONTH = 2


QUARTER_US = 900 * 10**6
BUSY_US = 60 * 10**6
"""Busy time per host is kept per minute: few enough intervals in a row to merge cheaply."""
DAY_US = 86_400 * 10**6

ERROR_STATUSES = frozenset({"error", "interrupted"})
"""Span statuses that count as errors in reports (a rejected call is refused, not failed)."""

COLD_LOAD_NS = 100_000_000
"""A ``load_duration`` at or above this (100 ms) means the model was loaded for the call.

Ollama reports a few milliseconds of load time when the model is already in
memory, and hundreds of milliseconds to seconds when it has to read the weights.
"""

DIMENSIONS = ("tenant", "department", "user", "model", "currency", "status", "error_type")
MEASURES = (
    "requests", "input_tokens", "output_tokens", "busy_ns", "load_ns", "cost_tokens",
    "cost_compute", "cost_energy", "cost_fee", "cost_total", "unpriced", "unpriced_tokens",
    "cold_loads", "cold_load_ns",
)  # fmt: skip
HISTOGRAM_KEY = ("tenant", "department", "model")


class Metric(IntEnum):
    """What a histogram counts. Durations are binned by :func:`duration_bin`, speed by :func:`speed_bin`."""

    LATENCY = 0
    TTFT = 1
    QUEUE = 2
    SPEED = 3


_LATENCY, _TTFT, _QUEUE, _SPEED = (int(m) for m in Metric)


# -- cells ---------------------------------------------------------------------------


def floor_cell(grain: Grain, us: int) -> int:
    """The start (µs since the epoch) of the ``grain`` cell holding instant ``us``."""
    if grain is Grain.QUARTER:
        return int(us // QUARTER_US * QUARTER_US)
    if grain is Grain.DAY:
        return int(us // DAY_US * DAY_US)
    return _month_start_us(us // DAY_US)


def next_cell(grain: Grain, start: int) -> int:
    """The start of the cell after the one starting at ``start``."""
    if grain is Grain.QUARTER:
        return start + QUARTER_US
    if grain is Grain.DAY:
        return start + DAY_US
    day = from_us(start).date()
    following = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return to_us(datetime(following.year, following.month, 1, tzinfo=UTC))


@functools.lru_cache(maxsize=4096)
def _month_start_us(day_number: int) -> int:
    day = from_us(day_number * DAY_US)
    return to_us(datetime(day.year, day.month, 1, tzinfo=UTC))


# -- histogram bins -------------------------------------------------------------------
#
# Within each power of ten, bins are 5 % of the decade's start wide or less: mantissas
# 100-200 in steps of 5, 200-500 in steps of 10, 500-1000 in steps of 20, so 75 bins
# a decade, and one rollup row per decade holds them all (``b00`` ... ``b74``).

_UPPER = (
    *range(105, 201, 5),
    *range(210, 501, 10),
    *range(520, 1001, 20),
)
_LOWER = (*range(100, 200, 5), *range(200, 500, 10), *range(500, 1000, 20))
SLOTS = len(_UPPER)
BIN_COLUMNS = tuple(f"b{index:02d}" for index in range(SLOTS))
TINY = -1
"""The decade of the bins below the grid: exactly 0, and (durations) up to 100 ns."""


_POWERS = tuple(10**n for n in range(40))


def _slot(value: int, unit: int, upper: bool) -> int:
    """The bin index of ``value`` in its decade, whose mantissas 100..1000 are in ``unit`` steps."""
    if upper:  # the first edge at or above the value
        if value <= 200 * unit:
            return -(-(value - 100 * unit) // (5 * unit)) - 1
        if value <= 500 * unit:
            return 19 + -(-(value - 200 * unit) // (10 * unit))
        return 49 + -(-(value - 500 * unit) // (20 * unit))
    if value < 200 * unit:  # the last edge at or below the value
        return (value - 100 * unit) // (5 * unit)
    if value < 500 * unit:
        return 20 + (value - 200 * unit) // (10 * unit)
    return 50 + (value - 500 * unit) // (20 * unit)


def duration_slot(ns: int) -> tuple[int, int]:
    """(decade, bin) of a duration, binned up: see :func:`duration_bin`."""
    if ns <= 100:
        return TINY, 0 if ns <= 0 else 1
    decade = len(str(ns - 1)) - 3
    return decade, _slot(ns, _POWERS[decade], True)


def speed_slot(tokens: int, eval_ns: int) -> tuple[int, int]:
    """(decade, bin) of a generation speed in millionths of a token per second, binned down."""
    value = tokens * 10**15 // eval_ns
    if value < 100:
        return TINY, 0
    decade = len(str(value)) - 3
    return decade, _slot(value, _POWERS[decade], False)


def slot_edge(metric: Metric, decade: int, index: int) -> int:
    """The edge a bin stands for: upper for durations, lower for speed."""
    if decade == TINY:
        return 100 if index == 1 else 0
    unit: int = 10**decade
    edges: tuple[int, ...] = _LOWER if metric is Metric.SPEED else _UPPER
    return edges[index] * unit


def duration_bin(ns: int) -> int:
    """The upper edge of the bin holding a duration: the smallest grid value ≥ ``ns``.

    The grid is 1.05, 1.10, …, 2.00, 2.1, …, 5.0, 5.2, …, 10.0 times each power of
    ten nanoseconds (0 is its own bin, and anything up to 100 ns shows as 100 ns), so
    a bin is at most 5 % wide. A percentile read from bins is the upper edge of the
    bin holding the true nearest-rank percentile: never below it, at most 5 % above.
    """
    decade, index = duration_slot(ns)
    return slot_edge(Metric.LATENCY, decade, index)


def speed_bin(tokens: int, eval_ns: int) -> int:
    """The lower edge of the bin holding ``tokens / eval_ns``, in millionths of a token per second.

    Same grid as :func:`duration_bin`, rounded down: a speed read from bins is never
    above the true one and at most 5 % below it (below 0.0001 token/s it reads 0).
    """
    decade, index = speed_slot(tokens, eval_ns)
    return slot_edge(Metric.SPEED, decade, index)


def queue_ns(span: Any) -> int | None:
    """Ollama's total time less load, prompt evaluation and generation: time spent waiting."""
    if span.total_duration_ns is None:
        return None
    busy = (
        (span.load_duration_ns or 0)
        + (span.prompt_eval_duration_ns or 0)
        + (span.eval_duration_ns or 0)
    )
    # Durations are measured separately and can overlap by a hair; waiting is never negative.
    return max(0, int(span.total_duration_ns) - busy)


def histogram_slots(span: Any) -> list[tuple[int, int, int]]:
    """The (metric, decade, bin) a span adds one call to."""
    slots = []
    if span.latency_ns is not None:
        slots.append((_LATENCY, *duration_slot(span.latency_ns)))
    if span.ttft_ns is not None:
        slots.append((_TTFT, *duration_slot(span.ttft_ns)))
    waited = queue_ns(span)
    if waited is not None:
        slots.append((_QUEUE, *duration_slot(waited)))
    # Ollama's speed, not the network's: durations the meter measured itself are left out.
    if (
        span.duration_source != "measured"
        and span.output_tokens > 0
        and (span.eval_duration_ns or 0) > 0
    ):
        slots.append((_SPEED, *speed_slot(span.output_tokens, span.eval_duration_ns)))
    return slots


def histogram_entries(span: Any) -> Iterator[tuple[Metric, int]]:
    """The (metric, bin edge) a span adds one call to."""
    for metric, decade, index in histogram_slots(span):
        yield Metric(metric), slot_edge(Metric(metric), decade, index)


# -- what one span adds ----------------------------------------------------------------


def measures_of(span: SpanRecord) -> tuple[int, ...]:
    """The span's contribution to each of :data:`MEASURES`."""
    load = span.load_duration_ns or 0
    cold = load >= COLD_LOAD_NS
    unpriced = 1 if span.unpriced else 0
    return (
        1,
        span.input_tokens,
        span.output_tokens,
        (span.prompt_eval_duration_ns or 0) + (span.eval_duration_ns or 0),
        load,
        span.cost_tokens,
        span.cost_compute,
        span.cost_energy,
        span.cost_fee,
        span.cost_total,
        unpriced,
        unpriced if span.input_tokens + span.output_tokens > 0 else 0,
        1 if cold else 0,
        load if cold else 0,
    )


def busy_interval(span: SpanRecord, start: int | None = None) -> tuple[int, int] | None:
    """When Ollama worked on the call, in µs: its busy time, ending when the call ended.

    Busy time is prompt evaluation plus generation (a missing one counts as 0); it
    never starts before the call did.
    """
    busy_ns = (span.prompt_eval_duration_ns or 0) + (span.eval_duration_ns or 0)
    if busy_ns <= 0:
        return None
    if start is None:
        start = to_us(span.started_at)
    end = to_us(span.ended_at) if span.ended_at is not None else start
    begin = max(start, end - busy_ns // 1000)
    return (begin, end) if end > begin else None


def busy_pieces(
    span: SpanRecord, start: int | None = None
) -> Iterator[tuple[int, tuple[int, int]]]:
    """The span's busy interval cut at minutes: (minute start, (begin, end) offsets in it)."""
    interval = busy_interval(span, start)
    if interval is None:
        return
    begin, end = interval
    cell = begin - begin % BUSY_US
    while cell < end:
        after = cell + BUSY_US
        yield cell, (max(begin, cell) - cell, min(end, after) - cell)
        cell = after


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open intervals merged into disjoint ones, in order."""
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and begin <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((begin, end))
    return merged


def parse_intervals(value: str) -> list[tuple[int, int]]:
    if not value:
        return []
    pairs = (part.split("-") for part in value.split(","))
    return [(int(a), int(b)) for a, b in pairs]


def format_intervals(intervals: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{a}-{b}" for a, b in intervals)


class RollupDelta:
    """What a batch of spans adds to (or, with sign -1, takes from) the rollups.

    Sums are gathered per quarter hour, histograms per day, and folded into days and
    months only when written, so a large batch costs one upsert per distinct key.
    """

    __slots__ = ("busy", "histograms", "quarters")

    def __init__(self) -> None:
        self.quarters: dict[tuple[Any, ...], list[int]] = {}
        self.histograms: dict[tuple[Any, ...], list[int]] = {}
        self.busy: defaultdict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)

    def add(self, span: SpanRecord, sign: int = 1, *, busy: bool = True) -> None:
        us = to_us(span.started_at)
        quarter = us - us % QUARTER_US
        model = span.response_model or span.request_model
        tenant, department = span.tenant, span.department
        key = (
            quarter,
            tenant,
            department,
            span.user or "",
            model,
            span.currency,
            span.status,
            span.error_type or "",
        )
        values = measures_of(span)
        current = self.quarters.get(key)
        if current is None:
            self.quarters[key] = [sign * v for v in values] if sign != 1 else list(values)
        else:
            self.quarters[key] = [a + sign * b for a, b in zip(current, values, strict=True)]
        prefix = (us - us % DAY_US, tenant, department, model)
        histograms = self.histograms
        for metric, decade, index in histogram_slots(span):
            hkey = (*prefix, metric, decade)
            counts = histograms.get(hkey)
            if counts is None:
                counts = histograms[hkey] = [0] * SLOTS
            counts[index] += sign
        if busy:
            self._add_busy(span, us)

    def _add_busy(self, span: SpanRecord, start: int) -> None:
        host = span.upstream_host
        busy = self.busy
        busy[(start - start % BUSY_US, host)]  # the host served a call then: it adds capacity
        if span.prompt_eval_duration_ns or span.eval_duration_ns:
            for cell, piece in busy_pieces(span, start):
                busy[(cell, host)].append(piece)

    def cube_rows(self, grains: Sequence[Grain] = tuple(Grain)) -> dict[tuple[Any, ...], list[int]]:
        """Every (grain, start s, *dimensions) this delta changes, with its measure deltas."""
        rows: dict[tuple[Any, ...], list[int]] = {}
        starts: dict[int, list[int]] = {}
        for (quarter, *dims), values in self.quarters.items():
            cells = starts.get(quarter)
            if cells is None:
                cells = starts[quarter] = [floor_cell(g, quarter) // 10**6 for g in grains]
            for grain, start in zip(grains, cells, strict=True):
                key = (int(grain), start, *dims)
                current = rows.get(key)
                rows[key] = (
                    values
                    if current is None
                    else [a + b for a, b in zip(current, values, strict=True)]
                )
        return {key: values for key, values in rows.items() if any(values)}

    def histogram_rows(
        self, grains: Sequence[Grain] = (Grain.DAY, Grain.MONTH)
    ) -> dict[tuple[Any, ...], list[int]]:
        """Every (grain, start s, tenant, department, model, metric, decade) changed, with its bins."""
        rows: dict[tuple[Any, ...], list[int]] = {}
        for (day, *rest), counts in self.histograms.items():
            for grain in grains:
                key = (int(grain), floor_cell(grain, day) // 10**6, *rest)
                current = rows.get(key)
                rows[key] = (
                    counts
                    if current is None
                    else [a + b for a, b in zip(current, counts, strict=True)]
                )
        return {key: counts for key, counts in rows.items() if any(counts)}

    def write(self, conn: Connection, *, months: bool = True) -> None:
        """Add this delta to the rollups, in the caller's transaction.

        Keys are written in sorted order, so concurrent writers on PostgreSQL take
        row locks in one order and never deadlock each other. ``months=False``
        leaves month cells alone (a rebuild sums them from days afterwards).
        """
        statements = _statements(conn.dialect)
        grains = tuple(Grain) if months else (Grain.QUARTER, Grain.DAY)
        cube = self.cube_rows(grains)
        if cube:
            conn.exec_driver_sql(statements.cube.sql, [(*key, *cube[key]) for key in sorted(cube)])
        histograms = self.histogram_rows(tuple(g for g in grains if g is not Grain.QUARTER))
        if histograms:
            conn.exec_driver_sql(
                statements.histogram.sql,
                [(*key, *histograms[key]) for key in sorted(histograms)],
            )
        if self.busy:
            _write_busy(conn, statements, self.busy)


def _write_busy(
    conn: Connection, statements: _Statements, busy: dict[tuple[int, str], list[tuple[int, int]]]
) -> None:
    keys = sorted(busy)
    # Make sure each row exists, then (on PostgreSQL) lock the ones whose intervals change,
    # in key order.
    conn.exec_driver_sql(
        statements.busy_presence.sql, [(start // 10**6, host, "", 0) for start, host in keys]
    )
    changed = [key for key in keys if busy[key]]
    if not changed:
        return
    updates = []
    for start, host in changed:  # a call touches one or two quarters: one lookup each
        seconds = start // 10**6
        stored = conn.exec_driver_sql(statements.busy_select.sql, (seconds, host)).scalar_one()
        merged = merge_intervals([*parse_intervals(stored), *busy[(start, host)]])
        updates.append(
            (format_intervals(merged), sum(end - begin for begin, end in merged), seconds, host)
        )
    conn.exec_driver_sql(statements.busy_update.sql, updates)


# -- statements compiled once per dialect ------------------------------------------------


def _positional(statement: Any, dialect: Dialect, names: Sequence[str]) -> str:
    """``statement`` as driver SQL taking its parameters by position, in the order of ``names``."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    text = compiled.string
    if compiled.positional:
        assert tuple(compiled.positiontup) == tuple(names), "parameters out of order"
        return str(text)
    # pyformat (psycopg): %(name)s → %s, in the order given
    order = []
    for name in names:
        marker = f"%({name})s"
        assert text.count(marker) == 1
        order.append((text.index(marker), name))
    assert [n for _, n in sorted(order)] == list(names), "parameters out of order"
    for name in names:
        text = text.replace(f"%({name})s", "%s")
    return str(text)


class _DriverSQL:
    __slots__ = ("sql",)

    def __init__(self, sql: str) -> None:
        self.sql = sql


def _upsert(
    dialect: Dialect, table: Table, keys: Sequence[str], added: Sequence[str]
) -> _DriverSQL:
    names = [*keys, *added]
    module: Any = postgresql if dialect.name == "postgresql" else sqlite
    statement = module.insert(table).values({name: bindparam(name) for name in names})
    if added and added[0] == "intervals":
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    else:
        statement = statement.on_conflict_do_update(
            index_elements=list(keys),
            set_={name: table.c[name] + statement.excluded[name] for name in added},
        )
    return _DriverSQL(_positional(statement, dialect, names))


class _Statements:
    def __init__(self, dialect: Dialect) -> None:
        self.cube = _upsert(dialect, ROLLUPS, ["grain", "start", *DIMENSIONS], MEASURES)
        self.histogram = _upsert(
            dialect,
            HISTOGRAMS,
            ["grain", "start", *HISTOGRAM_KEY, "metric", "decade"],
            BIN_COLUMNS,
        )
        self.busy_presence = _upsert(dialect, BUSY, ["start", "host"], ["intervals", "busy_us"])
        changed = (
            update(BUSY)
            .where(BUSY.c.start == bindparam("b_start"), BUSY.c.host == bindparam("b_host"))
            .values(intervals=bindparam("b_intervals"), busy_us=bindparam("b_busy"))
        )
        self.busy_update = _DriverSQL(
            _positional(changed, dialect, ["b_intervals", "b_busy", "b_start", "b_host"])
        )
        stored = select(BUSY.c.intervals).where(
            BUSY.c.start == bindparam("b_start"), BUSY.c.host == bindparam("b_host")
        )
        if dialect.name == "postgresql":
            # Lock the row: a concurrent writer of the same quarter waits, then sees ours.
            stored = stored.with_for_update()
        self.busy_select = _DriverSQL(_positional(stored, dialect, ["b_start", "b_host"]))


@functools.cache
def _statements_for(name: str, dialect: Dialect) -> _Statements:
    return _Statements(dialect)


def _statements(dialect: Dialect) -> _Statements:
    return _statements_for(dialect.name, dialect)


def apply(conn: Connection, spans: Iterable[SpanRecord], sign: int = 1) -> None:
    """Add ``spans`` (just inserted) to the rollups, or take them out with ``sign=-1``."""
    delta = RollupDelta()
    for span in spans:
        delta.add(span, sign, busy=sign > 0)
    delta.write(conn)


# -- facts about the ledger ------------------------------------------------------------


def get_meta(conn: Connection, key: str) -> str | None:
    value = conn.execute(select(META.c.value).where(META.c.key == key)).scalar()
    return None if value is None else str(value)


def set_meta(conn: Connection, key: str, value: str | None) -> None:
    conn.execute(delete(META).where(META.c.key == key))
    if value is not None:
        conn.execute(insert(META).values(key=key, value=value))


def pruned_before(conn: Connection) -> int | None:
    """Raw spans that started before this instant (µs) may have been pruned; rollups keep them."""
    value = get_meta(conn, "pruned_before")
    return None if value is None else int(value)


# -- rebuilding from raw spans ---------------------------------------------------------


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
    from ollama_meter.ledger._spans import row_to_span

    start_s, end_s = day // 10**6, (day + DAY_US) // 10**6
    for table, grains in ((ROLLUPS, (Grain.QUARTER, Grain.DAY)), (HISTOGRAMS, (Grain.DAY,))):
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
    query = select(SpanRow).where(
        SpanRow.started_at >= from_us(day - DAY_US), SpanRow.started_at < from_us(day + DAY_US)
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
