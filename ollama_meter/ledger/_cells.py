"""The arithmetic of rollups: cells, histogram bins and busy intervals. No SQL, no I/O.

A rollup cell is a quarter hour, a day or a month (:class:`Grain`); days and
months begin at midnight in the ledger's zone (UTC unless set).
Durations and speeds are counted in fixed bins, 5 % wide at most, so
percentiles merge across cells (:func:`duration_bin`). Busy time is kept as
merged intervals per minute and host. What one span adds to each is here
(:func:`measures_of`, :func:`histogram_slots`, :func:`busy_pieces`); writing it
is :mod:`._rollup`'s job.
"""

from __future__ import annotations

import functools
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, tzinfo
from enum import IntEnum
from typing import Any

from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.periods import day_of, local_midnight
from ollama_meter.records import SpanRecord


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

ANYONE = "*"
"""The user, status and error type of a cube row that sums over them (``*`` is none of
them): the overview most reads want, in a fraction of the rows (``_plan.cube_filters``)."""
DIMENSIONS = ("tenant", "department", "user", "model", "currency", "status", "error_type")
MEASURES = (
    "requests", "input_tokens", "output_tokens", "busy_ns", "load_ns", "cost_tokens",
    "cost_compute", "cost_energy", "cost_fee", "cost_total", "unpriced", "unpriced_tokens",
    "cold_loads", "cold_load_ns", "errors", "unpriced_usage",
)  # fmt: skip
"""What a cube row sums. ``errors`` and ``unpriced_usage`` fold the status in (see
:func:`measures_of`), so an overview row, which has no status, still answers them."""
HISTOGRAM_KEY = ("tenant", "department", "model")


class Metric(IntEnum):
    """What a histogram counts. Durations are binned by :func:`duration_bin`, speed by :func:`speed_bin`."""

    LATENCY = 0
    TTFT = 1
    QUEUE = 2
    """Inside Ollama: its total time less load, prompt evaluation and generation."""
    SPEED = 3
    GATEWAY_QUEUE = 4
    """Before the call was sent (``SpanRecord.queue_ns``): in the gateway for a free slot, in
    the Python API for its ``on_start`` hook; before Ollama's."""


_LATENCY, _TTFT, _QUEUE, _SPEED, _GATEWAY_QUEUE = (int(m) for m in Metric)


# -- cells ---------------------------------------------------------------------------


def floor_cell(grain: Grain, us: int, zone: tzinfo | None = None) -> int:
    """The start (µs since the epoch) of the ``grain`` cell holding instant ``us``.

    Days and months begin at midnight in ``zone`` (the ledger's zone; None is UTC),
    so a report in that zone reads whole cells. Quarter hours are the same in every
    zone in use, and every day and month is a run of whole quarter hours.
    """
    if grain is Grain.QUARTER:
        return int(us // QUARTER_US * QUARTER_US)
    if zone is None or zone is UTC:
        if grain is Grain.DAY:
            return int(us // DAY_US * DAY_US)
        return _month_start_us(us // DAY_US)
    return _zoned_start(grain, us // QUARTER_US, zone)


def next_cell(grain: Grain, start: int, zone: tzinfo | None = None) -> int:
    """The start of the cell after the one starting at ``start``."""
    if grain is Grain.QUARTER:
        return start + QUARTER_US
    if zone is None or zone is UTC:
        if grain is Grain.DAY:
            return start + DAY_US
        day = from_us(start).date()
        following = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
        return to_us(datetime(following.year, following.month, 1, tzinfo=UTC))
    # By the calendar, not by a longest day: Antarctica/Casey has had days of 27 hours
    # and Vostok one of 31 (from start + 26 h, a day's end was its own start: reads and
    # `db rollup` ran forever). The cell at ``start`` is the day of its first quarter, as in
    # _zoned_start; a day that was skipped (Apia, 30 December 2011) begins where the next
    # does, so it is no cell of its own.
    local = _cell_day(start // QUARTER_US, zone)
    if grain is Grain.DAY:
        following = date.fromordinal(local.toordinal() + 1)
    else:
        following = date(local.year + (local.month == 12), local.month % 12 + 1, 1)
    end = to_us(local_midnight(following, zone))
    return end - end % QUARTER_US


@functools.lru_cache(maxsize=65_536)
def _zoned_start(grain: Grain, quarter: int, zone: tzinfo) -> int:
    """The start of the local day or month holding quarter hour number ``quarter``."""
    day = _cell_day(quarter, zone)
    if grain is Grain.MONTH:
        day = day.replace(day=1)
    # Rounded down to a quarter hour for old odd offsets.
    start = to_us(local_midnight(day, zone))
    return start - start % QUARTER_US


@functools.lru_cache(maxsize=65_536)
def _cell_day(quarter: int, zone: tzinfo) -> date:
    """The local day quarter hour number ``quarter`` is in: the day of its last instant.

    Under an old odd offset (Berlin's +0:53:28 before 1893) the quarter hour in which
    midnight falls opens the new day, whose start is rounded down to it, so the cells still
    tile time. The day of an instant is :func:`~ollama_meter.periods.day_of`'s, as report
    windows cut it: where a clock fell back across midnight (St John's until 2011) the hour
    after the first midnight, which the clock reads as 23:xx, is in the new day (by the
    clock's date, a day's end came before its start, and reads of it ran forever).
    """
    return day_of(from_us((quarter + 1) * QUARTER_US - 1), zone)


@functools.lru_cache(maxsize=4096)
def _month_start_us(day_number: int) -> int:
    day = from_us(day_number * DAY_US)
    return to_us(datetime(day.year, day.month, 1, tzinfo=UTC))


def by_grain(
    quarters: dict[tuple[Any, ...], list[int]], grains: Sequence[Grain], zone: tzinfo | None
) -> Iterator[tuple[Grain, dict[tuple[Any, ...], list[int]]]]:
    """Quarter-hour sums (start µs, *key) as the cells of each of ``grains``, finest first.

    Days are summed from quarters and months from days: each coarser key is built once
    per finer one, not once per quarter.
    """
    cells = quarters
    inside: dict[int, int] = {}
    for grain in Grain:
        if grain > max(grains):
            return
        if grain is not Grain.QUARTER:
            cells, inside = _coarser(cells, inside, grain, zone)
        if grain in grains:
            yield grain, cells


def _coarser(
    cells: dict[tuple[Any, ...], list[int]],
    inside: dict[int, int],
    grain: Grain,
    zone: tzinfo | None,
) -> tuple[dict[tuple[Any, ...], list[int]], dict[int, int]]:
    """``cells`` summed into the ``grain`` cells holding them, and a quarter inside each.

    ``inside`` names a quarter within each of ``cells``' starts (none: they are quarters):
    a cell's place is looked up by that quarter, as the rollups define it, never by the
    finer cell's start (a day that begins before local midnight, in a zone of old odd
    offsets, still belongs to its own month).
    """
    starts: dict[int, int] = {}
    quarters: dict[int, int] = {}
    out: dict[tuple[Any, ...], list[int]] = {}
    for key, values in cells.items():
        start = starts.get(key[0])
        if start is None:
            quarter = inside.get(key[0], key[0])
            start = starts[key[0]] = floor_cell(grain, quarter, zone)
            quarters.setdefault(start, quarter)
        coarse = (start, *key[1:])
        current = out.get(coarse)
        out[coarse] = values if current is None else list(map(operator.add, current, values))
    return out, quarters


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
_UPPER_EDGES = tuple(edge * power for power in _POWERS for edge in _UPPER)
_LOWER_EDGES = tuple(edge * power for power in _POWERS for edge in _LOWER)
"""Every bin's edge in every decade, ascending: a bin is found by one binary search."""


def duration_slot(ns: int) -> tuple[int, int]:
    """(decade, bin) of a duration, binned up: see :func:`duration_bin`."""
    if ns <= 100:
        return TINY, 0 if ns <= 0 else 1
    return divmod(bisect_left(_UPPER_EDGES, ns), SLOTS)  # the first edge at or above


def speed_slot(tokens: int, eval_ns: int) -> tuple[int, int]:
    """(decade, bin) of a generation speed in millionths of a token per second, binned down."""
    value = tokens * 10**15 // eval_ns
    if value < 100:
        return TINY, 0
    return divmod(bisect_right(_LOWER_EDGES, value) - 1, SLOTS)  # the last edge at or below


def slot_edge(metric: Metric, decade: int, index: int) -> int:
    """The edge a bin stands for: upper for durations, lower for speed."""
    return slot_edges(metric is Metric.SPEED, decade)[index]


@functools.lru_cache(maxsize=256)
def slot_edges(speed: bool, decade: int) -> tuple[int, ...]:
    """The edges of a decade's bins in order (``b00`` ... ``b74``): see :func:`slot_edge`."""
    if decade == TINY:
        return (0, 100, *(0,) * (SLOTS - 2))
    return tuple(edge * 10**decade for edge in (_LOWER if speed else _UPPER))


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
    if span.queue_ns is not None:
        slots.append((_GATEWAY_QUEUE, *duration_slot(span.queue_ns)))
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
    """The span's contribution to each of :data:`MEASURES`.

    A call of an error status is an error; unpriced usage is an unpriced call that
    succeeded, or an unpriced failure that consumed tokens (a call that consumed
    nothing costs nothing). ``_aggregate.span_measures`` is the same in SQL.
    """
    load = span.load_duration_ns or 0
    cold = load >= COLD_LOAD_NS
    unpriced = 1 if span.unpriced else 0
    used = unpriced if span.input_tokens + span.output_tokens > 0 else 0
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
        used,
        1 if cold else 0,
        load if cold else 0,
        1 if span.status in ERROR_STATUSES else 0,
        unpriced if span.status == "ok" else used,
    )


def busy_interval(span: SpanRecord, start: int | None = None) -> tuple[int, int] | None:
    """When Ollama worked on the call, in µs: its busy time, ending when the call ended.

    Busy time is prompt evaluation plus generation (a missing one counts as 0); it
    never starts before the call did, and ends at most a day after: rebuilding a day
    and reading raw spans look back one day for calls still busy, so a longer call (an
    imported line may say anything) counts the same in every one of them.
    """
    busy_ns = (span.prompt_eval_duration_ns or 0) + (span.eval_duration_ns or 0)
    if busy_ns <= 0:
        return None
    if start is None:
        start = to_us(span.started_at)
    end = min(to_us(span.ended_at), start + DAY_US) if span.ended_at is not None else start
    begin = max(start, end - busy_ns // 1000)
    return (begin, end) if end > begin else None


def busy_pieces(span: SpanRecord, start: int | None = None) -> list[tuple[int, tuple[int, int]]]:
    """The span's busy interval cut at minutes: (minute start, (begin, end) offsets in it)."""
    interval = busy_interval(span, start)
    if interval is None:
        return []
    begin, end = interval
    cell = begin - begin % BUSY_US
    pieces = []
    while cell < end:
        after = cell + BUSY_US
        pieces.append((cell, (max(begin, cell) - cell, min(end, after) - cell)))
        cell = after
    return pieces


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


def add_intervals(stored: str, new: Iterable[tuple[int, int]]) -> tuple[str, int]:
    """``stored`` (disjoint intervals, in order, as text) with ``new`` merged in, and by how
    many microseconds their union grew.

    Calls mostly end in time order, so what they add lies past the stored intervals or
    overlaps the last: then only the last is read, and a busy minute of many short calls
    costs each write the same, not more with every call before it in the minute.
    """
    added = merge_intervals(new)
    if not added:
        return stored, 0
    head, _, last = stored.rpartition(",")
    if last:
        begin, end = map(int, last.split("-"))
        if added[0][0] >= begin:  # nothing stored before the last interval is touched
            merged = merge_intervals([(begin, end), *added])
            grew = sum(b - a for a, b in merged) - (end - begin)
            return ",".join(filter(None, (head, format_intervals(merged)))), grew
    before = parse_intervals(stored)
    merged = merge_intervals([*before, *added])
    grew = sum(b - a for a, b in merged) - sum(b - a for a, b in before)
    return format_intervals(merged), grew
