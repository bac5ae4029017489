"""Rebuilding rollups from raw spans (``ometer db rollup``), and once after a migration asks.

Day by day (of the ledger's zone): the day's spans and cells are read in one snapshot with
no lock, and the difference is written in short pieces (``_correct``), so gateways keep
writing and spans written meanwhile are counted once; then each month is made the sum of
its days. Days before the prune horizon keep their rollups: their spans are gone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from ollama_meter.ledger import _correct
from ollama_meter.ledger._at_work import BEAT_S, STOPPED, at_work as _at_work, beat as _beat
from ollama_meter.ledger._cells import (
    Grain,
    busy_pieces,
    floor_cell,
    merge_intervals,
    next_cell,
)
from ollama_meter.ledger._correct import (
    BINS,
    BUSY_SUMS,
    CUBE,
    SPANS_BUSY_IN,
    Correction,
    Key,
    Moved,
    Pass,
    busy_in,
    stored_minutes,
    stored_sums,
    summed_days,
)
from ollama_meter.ledger._deadline import unbounded
from ollama_meter.ledger._meta import get_meta, ledger_zone, pruned_before, set_meta
from ollama_meter.ledger._rezone import change_zone
from ollama_meter.ledger._rollup import (
    BUSY,
    BUSY_CELLS,
    HISTOGRAMS,
    ROLLUPS,
    RollupDelta,
)
from ollama_meter.ledger._span_rows import row_to_span
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger._zonerules import record_zone_rules
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import NO_HOST

log = logging.getLogger("ollama_meter.ledger")


def rebuild(
    write: Callable[[], Any],
    read: Callable[[], Any],
    *,
    progress: Callable[[int], None] | None = None,
    planned: Callable[[int], None] | None = None,
    zone: str | None = None,
) -> int:
    """Recompute every rollup that raw spans can answer: all days from the prune horizon on.

    ``zone`` (an IANA name) first moves the ledger's day and month cells to begin at
    that zone's midnights; refused once raw spans were pruned (their cells cannot be
    cut again). Gateways should be stopped meanwhile: they cut at the zone they read.

    Each day of the ledger's zone is read whole in one snapshot, with no lock, and what
    its cells lack or have too much is written in pieces of at most ``PIECE_ROWS`` rows
    (``_correct``: writers wait for a piece, never a day; spans written meanwhile are
    counted once), then each month is made the sum of its days the same way. Days before
    the horizon keep their rollups: their spans are gone.
    ``write``/``read`` open transactions (``Ledger.write``/``Ledger.read``). Busy time
    of a call that started the day before is counted from the earlier day's spans,
    so calls must not last longer than a day. Returns the number of spans read.

    ``planned(days)``: the days from the first to the last to redo, told before the first;
    ``progress(days)``: that many more are done, each whole (the days passed over with
    nothing to redo among them). A zone changed meanwhile starts the days again, told anew.
    """
    with unbounded():  # a day of a big ledger may take longer than a call's write
        if zone is not None:
            change_zone(write, zone)
        with write() as conn:
            # Until the last month is summed, days and months may disagree: if this stops,
            # whichever process opens the ledger next finishes it (build_if_stale).
            _beat(conn)
        try:
            total = _rebuild_all(write, read, _Told(progress, planned))
            with write() as conn:
                record_zone_rules(conn)  # every day is cut by this host's zone data now
                set_meta(conn, "rollups", "current")
                set_meta(conn, "rebuilding", None)
        except BaseException:  # stopped (Ctrl-C, SIGTERM, an error): the next open finishes it
            with contextlib.suppress(Exception), write() as conn:
                set_meta(conn, "rebuilding", STOPPED)
            raise
    return total


class _Recut(Exception):
    """The ledger's zone changed since this rebuild began (``db rollup --zone`` meanwhile)."""


class _Told:
    """Whom a rebuild tells how many days it has to do and how far it got."""

    def __init__(
        self, progress: Callable[[int], None] | None, planned: Callable[[int], None] | None
    ) -> None:
        self._progress, self._planned = progress, planned
        self._reached = 0

    def plan(self, first: int, last: int, zone: tzinfo | None) -> None:
        """The days from ``first`` to ``last`` (µs, their starts in ``zone``) are to be done."""
        self._reached = _day_number(first, zone) - 1
        if self._planned is not None:
            self._planned(_day_number(last, zone) - self._reached)

    def done(self, day: int, zone: tzinfo | None) -> None:
        """Every day to ``day`` is done."""
        number = _day_number(day, zone)
        if self._progress is not None:
            self._progress(number - self._reached)
        self._reached = number


def _day_number(day: int, zone: tzinfo | None) -> int:
    """The day that begins at ``day`` (µs) in ``zone``, counted in days (proleptic ordinal)."""
    return from_us(day).astimezone(zone or UTC).date().toordinal()


def _rebuild_all(write: Callable[[], Any], read: Callable[[], Any], told: _Told) -> int:
    """Every day from the first span or cell to the last, then their months and any other
    month with cells (one whose days lost every call); all again at the new zone's
    midnights if the zone changes meanwhile (a day cut at the old one would stay, read by
    no report)."""
    while True:
        with contextlib.suppress(_Recut):
            return _rebuild_once(write, read, told)


def _rebuild_once(write: Callable[[], Any], read: Callable[[], Any], told: _Told) -> int:
    with read() as conn:
        horizon = pruned_before(conn)
        cells_zone = ledger_zone(conn)
        bounds = []
        for column, extra in _STARTS:
            low, high = conn.execute(select(func.min(column), func.max(column)).where(*extra)).one()
            if low is None:
                continue
            if isinstance(low, datetime):
                bounds += [to_us(low), to_us(high)]
            else:
                bounds += [low * 10**6, high * 10**6]
    if not bounds:
        return 0
    return _rebuild_days(write, read, min(bounds), max(bounds), horizon, cells_zone, told)


REBUILD_POLL_S = 0.5
"""How often a process waiting for another's rebuild looks whether it is done."""


def _rebuild_days(
    write: Callable[[], Any],
    read: Callable[[], Any],
    low: int,
    high: int,
    horizon: int | None,
    zone: tzinfo | None,
    told: _Told,
) -> int:
    first = floor_cell(Grain.DAY, low, zone)
    if horizon is not None:
        first = max(first, _first_whole_day(horizon, zone))
    # The day after the last call too: it may have been busy past midnight (that minute and
    # its day were left out, or as they were, when no later call started).
    last = next_cell(Grain.DAY, floor_cell(Grain.DAY, high, zone), zone)
    told.plan(first, last, zone)
    total = 0
    months: set[int] = set()
    claim = Pass()
    beaten = time.monotonic()  # rebuild() said it began
    day: int | None = first
    while day is not None and day <= last:
        with read() as conn:
            _one_snapshot(conn)
            claim.read(conn)
            _same_zone(conn, zone)
            # A prune may have moved the horizon since the rebuild began: the days before
            # it have no raw spans left, only their rollups.
            moved = pruned_before(conn)
            if moved is not None and day < (start := _first_whole_day(moved, zone)):
                day = start
                continue
            count, correction = _read_day(conn, day, zone)
            # The next day with anything to redo; the day after one with calls always
            # (a call may have been busy past midnight).
            after = next_cell(Grain.DAY, day, zone)
            following = after if count else _next_day(conn, after, zone)
        # A day whose cells are right is not written (a rebuild of rollups that are right is
        # mostly such days), unless it is time to say the rebuild is still at work.
        if not correction.nothing or time.monotonic() - beaten >= BEAT_S:
            try:
                _correct.write(write, claim, correction, _beat)
            except Moved:  # another rebuild wrote since the read: read the day again
                continue
            beaten = time.monotonic()
        if correction.near_cap:  # the difference may have met a writer's at the cap
            continue
        total += count
        months.add(floor_cell(Grain.MONTH, day, zone))
        told.done(day, zone)
        day = following
    with read() as conn:  # a month none of whose days has a call or cell left is summed too
        months |= _months_with_cells(conn, floor_cell(Grain.MONTH, first, zone), zone)
    for month in sorted(months):
        while True:
            with read() as conn:
                _one_snapshot(conn)
                claim.read(conn)
                _same_zone(conn, zone)
                correction = _read_month(conn, month, zone)
            if correction.nothing:
                break
            with contextlib.suppress(Moved):
                _correct.write(write, claim, correction, _beat)
                if not correction.near_cap:
                    break
    return total


def _months_with_cells(conn: Connection, since: int, zone: tzinfo | None) -> set[int]:
    """The months (µs) of ``zone`` from ``since`` on that hold month cells in any rollup table
    (cut at another zone's midnight too, before a zone change: the month they fall in)."""
    found: set[int] = set()
    for table in (ROLLUPS, HISTOGRAMS, BUSY_CELLS):
        starts = select(table.c.start).where(
            table.c.grain == int(Grain.MONTH), table.c.start >= since // 10**6
        )
        for start in conn.execute(starts.distinct()).scalars():
            found.add(floor_cell(Grain.MONTH, start * 10**6, zone))
    return found


def _one_snapshot(conn: Connection) -> None:
    """Every read of this transaction sees the ledger at one moment (SQLite's reads do)."""
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="REPEATABLE READ")


def _same_zone(conn: Connection, zone: tzinfo | None) -> None:
    """Raise :class:`_Recut` unless the ledger's days still begin at ``zone``'s midnights."""
    if ledger_zone(conn) != zone:
        raise _Recut


def _first_whole_day(horizon: int, zone: tzinfo | None) -> int:
    """The first day that begins at or after the prune ``horizon``."""
    day = floor_cell(Grain.DAY, horizon, zone)
    return day if day == horizon else next_cell(Grain.DAY, day, zone)


_STARTS: tuple[tuple[Any, tuple[Any, ...]], ...] = (
    (SPANS.c.started_at, ()),
    *((ROLLUPS.c.start, (ROLLUPS.c.grain == int(g),)) for g in Grain),
    *((HISTOGRAMS.c.start, (HISTOGRAMS.c.grain == int(g),)) for g in Grain),
    (BUSY.c.start, ()),
    *((BUSY_CELLS.c.start, (BUSY_CELLS.c.grain == int(g),)) for g in (Grain.DAY, Grain.MONTH)),
)
"""Where a rebuild looks for what it must reach, each by its index: spans, and stored cells
of every grain. A day or month cell another zone cut (``db rollup --zone``) may begin
before the first call's day in the new zone, or hold no call at all: it is removed only
if its day (and month) is read."""


_FIRST_FROM = [
    (
        select(func.min(column)).where(*extra, column >= bindparam("at")),
        column is SPANS.c.started_at,
    )
    for column, extra in _STARTS
]
"""The first start at or after ``at`` in each of :data:`_STARTS` (built once)."""


def _next_day(conn: Connection, after: int, zone: tzinfo | None) -> int | None:
    """The first day from ``after`` on with spans or rollups (skips years of nothing at once)."""
    seconds = after // 10**6
    found = [
        conn.execute(query, {"at": from_us(after) if spans else seconds}).scalar()
        for query, spans in _FIRST_FROM
    ]
    moments = [to_us(f) if isinstance(f, datetime) else f * 10**6 for f in found if f is not None]
    return floor_cell(Grain.DAY, min(moments), zone) if moments else None


def _read_day(conn: Connection, day: int, zone: tzinfo | None) -> tuple[int, Correction]:
    """How many calls started on the day, and what its stored cells need to be what its
    spans say (quarters, the day, its minutes; months are summed from days afterwards)."""
    end = next_cell(Grain.DAY, day, zone)
    start_s, end_s = day // 10**6, end // 10**6
    delta = RollupDelta()
    count = 0
    # Today's spans, and yesterday's that were still busy after midnight.
    for row in conn.execute(SPANS_BUSY_IN, busy_in(day, end)):
        span = row_to_span(row)
        if to_us(span.started_at) >= day:
            delta.add(span)
            count += 1
        elif span.upstream_host != NO_HOST:  # yesterday's: its busy time into today counts here
            for cell, piece in busy_pieces(span):
                if cell >= day:
                    delta.busy[(cell, span.upstream_host)].append(piece)
    grains = (Grain.QUARTER, Grain.DAY)
    correction = Correction()
    correction.add(
        CUBE, delta.cube_rows(grains, zone), stored_sums(conn, CUBE, grains, start_s, end_s)
    )
    correction.add(
        BINS, delta.histogram_rows(grains, zone), stored_sums(conn, BINS, grains, start_s, end_s)
    )
    minutes = {
        (start // 10**6, host): (merge_intervals(pieces), delta.calls.get((start, host), 0))
        for (start, host), pieces in delta.busy.items()
        if day <= start < end
    }
    correction.add_minutes(minutes, stored_minutes(conn, start_s, end_s))
    busy: dict[Key, list[int]] = {}
    for (_, host), (intervals, calls) in minutes.items():
        sums = busy.setdefault((int(Grain.DAY), start_s, host), [0, 0])
        sums[0] += sum(b - a for a, b in intervals)
        sums[1] += calls
    busy = {key: sums for key, sums in busy.items() if any(sums)}
    if correction.minutes or busy != stored_sums(conn, BUSY_SUMS, [Grain.DAY], start_s, end_s):
        correction.resum = (start_s, end_s)
    return count, correction


def _read_month(conn: Connection, month: int, zone: tzinfo | None) -> Correction:
    """What the month's stored cells need to be the sums of its days'."""
    start_s, end_s = month // 10**6, next_cell(Grain.MONTH, month, zone) // 10**6
    correction = Correction()
    for kind in (CUBE, BINS, BUSY_SUMS):
        wanted = summed_days(conn, kind, start_s, end_s)
        correction.add(kind, wanted, stored_sums(conn, kind, [Grain.MONTH], start_s, end_s))
    return correction


def build_if_stale(ledger: Any) -> None:
    """Build the rollups a migration or a zone change asked for (``ledger_meta.rollups =
    'stale'``: nothing in them can be read until then), or finish a rebuild that stopped
    half way, once.

    A rebuild still at work is left to it: a stale ledger's is waited for (budgets and
    answers read the rollups, so none is given from half-built ones); a plain one's days
    are each whole, old or new, so the ledger is used meanwhile.
    """
    waiting = False
    while True:
        with ledger.read() as conn:
            stale = get_meta(conn, "rollups") == "stale"
            if not stale and get_meta(conn, "rebuilding") is None:
                return
            if not _at_work(conn):
                # Nothing to build from or correct (a new ledger). Cells with no span left
                # (all removed, a rebuild stopped half way) are not that: they are rebuilt.
                empty = all(
                    conn.execute(select(column).limit(1)).first() is None
                    for column in (SPANS.c.id, ROLLUPS.c.start)
                )
                break
        if not stale:
            return
        if not waiting:
            log.warning(
                "waiting for another process to finish rebuilding the rollups of %s",
                ledger.display_url,
            )
            waiting = True
        time.sleep(REBUILD_POLL_S)
    if empty:
        with ledger.write() as conn:
            set_meta(conn, "rollups", "current")
            set_meta(conn, "rebuilding", None)
        return
    log.warning("building rollups for the spans already in %s (once)", ledger.display_url)
    count = rebuild(ledger.write, ledger.read)
    log.warning("rollups built from %d span(s)", count)
