"""Rollups: the ledger's sums, kept as spans arrive, so answers do not grow with the ledger.

Every span that is inserted adds to four tables, in the same transaction:

- ``rollups``: sums (calls, errors, tokens, busy and load time, each cost part,
  unpriced calls and usage, cold loads) per cell and per (tenant, department, user,
  model, currency, status, error type), and again summed over user, status and
  error type (all ``*``), the overview most reads take. Cells are quarter hours,
  days and months of the ledger's zone (UTC unless set), so any window whose ends
  fall on a quarter hour (every local midnight of every time zone in use) is
  answered exactly from a few rows (see ``_aggregate``).
- ``rollup_histograms``: per day and month and (tenant, department, model),
  how many calls fell in each bin of latency, time to first token, queue time
  (inside Ollama, and in the gateway) and generation speed, so percentiles can be
  merged (:func:`duration_bin`); for all calls together (:data:`EVERYONE`) and per
  model over all tenants and departments (:data:`EACH_MODEL`) per quarter hour, day
  and month, so the whole organisation's percentiles, and each model's, need no raw
  spans up to the last quarter hour and read few rows (the dashboard's daily
  timings, ``perf --by model``).
- ``rollup_busy``: per minute and upstream host, the union of the calls' busy
  intervals and the calls that started, so chargeback's utilisation is exact
  without a scan; ``rollup_busy_cells`` sums them per day and month.

Only spans the insert really added count (re-recording an id adds nothing), the
cell is the span's own start time (a span that arrives a month late lands in its
month), and upserts add to what is there (``x = x + excluded.x``), so several
processes can write at once. ``ometer db rollup`` (``_rebuild``) recomputes
them from raw spans. Money stays integer micro-units throughout.

A sum stops at the largest 64-bit integer (:data:`MOST`) rather than fail the write:
each span is bounded, but a cell holds any number (4,612 calls at the longest durations,
1,001 at the most one call can cost, pass it). Such a cell is wrong money: a read that meets
it answers from the raw spans (``_aggregate``), or, where they were pruned, says so.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import tzinfo
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete

from ollama_meter.ledger._bins import (
    EACH_MODEL,
    EVERYONE,
    BinEntries,
    histogram_rows as _histogram_rows,
    write_bins,
)
from ollama_meter.ledger._cells import (
    ANYONE,
    BUSY_US,
    DIMENSIONS,
    MEASURES,
    QUARTER_US,
    Grain,
    add_intervals,
    busy_pieces,
    by_grain,
    histogram_slots,
    measures_of,
)
from ollama_meter.ledger._meta import write_facts
from ollama_meter.ledger._migrate import (
    PG_MIGRATION_LOCK,
    REVISION,
    check_revision_kept,
    revision_kept,
)
from ollama_meter.ledger._types import to_us
from ollama_meter.ledger._upserts import (
    BUSY,
    BUSY_CELLS,
    BUSY_READS,
    HISTOGRAMS,
    MOST,
    Statements,
    arrays,
    run,
    run_arrays,
    run_rows,
    statements_for,
)
from ollama_meter.ledger.models import ROLLUPS
from ollama_meter.records import NO_HOST, SpanRecord, counted_model

BUSY_GRAINS = (Grain.MONTH, Grain.DAY)
"""The cells busy minutes are summed into, coarsest first."""
REBUILD_LOCK = 0x6F6D7275  # "omru"
"""PostgreSQL advisory lock: writers of rollups share it, a rebuild's piece takes it alone."""


class RollupDelta:
    """What a batch of spans adds to (or, with sign -1, takes from) the rollups.

    Sums and histogram bins are gathered per quarter hour, and folded into the
    ledger zone's days and months only when written, so a large batch costs one
    upsert per distinct key.
    """

    __slots__ = ("busy", "calls", "histograms", "quarters", "taken")

    def __init__(self) -> None:
        self.quarters: dict[tuple[Any, ...], list[int]] = {}
        self.histograms = BinEntries()
        """The bins each call counts in, per quarter hour."""
        self.busy: defaultdict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
        """(minute, host) → busy pieces; a key without pieces: the host served a call then."""
        self.calls: dict[tuple[int, str], int] = {}
        """(minute, host) → calls that started then."""
        self.taken = False
        """Whether a call was taken out (sign below 1): only then can a row come to nothing."""

    def add(self, span: SpanRecord, sign: int = 1, *, busy: bool = True) -> None:
        us = to_us(span.started_at)
        quarter = us - us % QUARTER_US
        model = counted_model(span.response_model or span.request_model)
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
        if sign != 1:
            self.taken |= sign < 1
            values = tuple(sign * v for v in values)
        current = self.quarters.get(key)
        self.quarters[key] = (
            list(values) if current is None else list(map(operator.add, current, values))
        )
        slots = histogram_slots(span)
        if slots:
            self.histograms.add(quarter, (tenant, department, model), slots, sign)
        if busy:
            self._add_busy(span, us)

    def _add_busy(self, span: SpanRecord, start: int) -> None:
        host = span.upstream_host
        if host == NO_HOST:  # sent to no server: nobody's capacity, nobody's busy time
            return
        busy = self.busy
        minute = (start - start % BUSY_US, host)
        busy[minute]  # the host served a call then: it adds capacity
        self.calls[minute] = self.calls.get(minute, 0) + 1
        if span.prompt_eval_duration_ns or span.eval_duration_ns:
            for cell, piece in busy_pieces(span, start):
                busy[(cell, host)].append(piece)

    def _fits(self) -> bool:
        """Whether every cube row's sums fit a 64-bit column (:data:`MOST`): a row sums some
        of the quarter-hour cells, each once, so none is further from 0 than all of theirs
        summed in magnitude (a third of the rows' values, summed in C, not each row's)."""
        return all(
            sum(map(abs, measure)) <= MOST for measure in zip(*self.quarters.values(), strict=True)
        )

    def cube_rows(
        self, grains: Sequence[Grain] = tuple(Grain), zone: tzinfo | None = None
    ) -> dict[tuple[Any, ...], list[int]]:
        """Every (grain, start s, *dimensions) this delta changes, with its measure deltas.

        Each row comes twice: for its user, status and error type, and summed over
        them (``ANYONE`` for all three), the overview.
        """
        rows: dict[tuple[Any, ...], list[int]] = {}
        for grain, cells in by_grain(self.quarters, grains, zone):
            level = int(grain)
            for (start, tenant, department, user, model, currency, *rest), values in cells.items():
                seconds = start // 10**6
                rows[(level, seconds, tenant, department, user, model, currency, *rest)] = values
                key = (level, seconds, tenant, department, ANYONE, model, currency, ANYONE, ANYONE)
                current = rows.get(key)
                rows[key] = values if current is None else list(map(operator.add, current, values))
        if not self.taken:  # every row counts a call: none comes to nothing
            return rows
        return {key: values for key, values in rows.items() if any(values)}

    def histogram_rows(
        self, grains: Sequence[Grain] = (Grain.DAY, Grain.MONTH), zone: tzinfo | None = None
    ) -> dict[tuple[Any, ...], list[int]]:
        """Every (grain, start s, tenant, department, model, metric, decade) changed, with its bins.

        All calls together (key :data:`EVERYONE`) and each model over all tenants and
        departments (:data:`EACH_MODEL`) are kept too, per quarter hour as well as per day
        and month: the only rows a question about everyone, or per model, reads.
        """
        return _histogram_rows(self.histograms.count(grains, zone))

    def write(self, conn: Connection, zone: tzinfo | None) -> None:
        """Add this delta to the rollups of a ledger whose zone is ``zone``
        (:func:`~ollama_meter.ledger._meta.ledger_zone`), in the caller's transaction.

        Keys are written in sorted order, so concurrent writers on PostgreSQL take
        row locks in one order and never deadlock each other.
        """
        statements = statements_for(conn.dialect)
        cube = self.cube_rows(tuple(Grain), zone)
        if cube:
            keys = sorted(cube)
            run_rows(conn, statements.cube, _with_values(keys, cube, fits=self._fits()))
            if self.taken:
                _drop_emptied(conn, [key for key in keys if cube[key][_REQUESTS] < 0])
        if self.histograms:
            write_bins(conn, statements, self.histograms.count(tuple(Grain), zone))
        if self.busy:
            _write_busy(conn, statements, self.busy, self.calls, zone)


_REQUESTS = MEASURES.index("requests")
_CUBE_KEY = ("grain", "start", *DIMENSIONS)


def _drop_emptied(conn: Connection, keys: Sequence[tuple[Any, ...]]) -> None:
    """Remove the cube rows ``keys`` names that no call is left in: a delta that takes calls
    away (``ometer reprice`` moving them to another currency) left rows of zeros behind, which
    a rebuild from raw spans does not have and every read of the cell went on reading."""
    if keys:
        where = and_(*(ROLLUPS.c[name] == bindparam(name) for name in _CUBE_KEY))
        conn.execute(
            delete(ROLLUPS).where(where, ROLLUPS.c.requests == 0),
            [dict(zip(_CUBE_KEY, key, strict=True)) for key in keys],
        )


def lock_cells(conn: Connection, *, alone: bool = False) -> None:
    """Take the rollups' lock for this transaction: shared by writers, ``alone`` for a
    rebuild's piece (``_correct``) or a prune; and refuse a ledger of another schema revision.

    A piece replaces busy minutes (deleted, and inserted as their spans and what writers
    merged since make them) and sums a day's busy cells again from its minutes: a writer
    merging a minute between the two would be lost, or break the insert ("duplicate
    key"). Taken before the span insert, a writer commits before the piece begins or
    waits until it is done. SQLite writers take turns already (``BEGIN IMMEDIATE``).

    Every writer of spans or rollups also waits for a migration under way (PostgreSQL: the
    migration's lock, shared; SQLite: its write lock) and then writes only a ledger of this
    ometer's revision (:func:`~ollama_meter.ledger._migrate.check_revision_kept`).
    """
    _take_locks(conn, alone=alone)
    check_revision_kept(conn)


def lock_for_spans(conn: Connection) -> tuple[int | None, tzinfo | None]:
    """:func:`lock_cells` for a write of spans, then the prune horizon and the ledger's zone
    (on PostgreSQL read with the revision in one statement, after the locks)."""
    _take_locks(conn)
    found, horizon, zone = write_facts(conn, REVISION)
    revision_kept(conn, found)
    return horizon, zone


def _take_locks(conn: Connection, *, alone: bool = False) -> None:
    if conn.dialect.name == "postgresql":
        kind = "" if alone else "_shared"
        conn.exec_driver_sql(
            f"SELECT pg_advisory_xact_lock{kind}({REBUILD_LOCK}), "
            f"pg_advisory_xact_lock_shared({PG_MIGRATION_LOCK})"
        )


def within(values: Sequence[int]) -> Sequence[int]:
    """``values`` as a 64-bit column takes them: a batch of many spans may sum past :data:`MOST`."""
    fits = not values or (min(values) >= -MOST and max(values) <= MOST)  # in C, per row
    return values if fits else [min(max(v, -MOST), MOST) for v in values]


def _with_values(
    keys: Sequence[tuple[Any, ...]], rows: dict[tuple[Any, ...], list[int]], *, fits: bool = False
) -> list[tuple[Any, ...]]:
    """Each of ``keys`` followed by its values, as a 64-bit column takes them (:func:`within`);
    ``fits``: every value is known to be within 64 bits already."""
    values = list(map(rows.__getitem__, keys))
    if fits:
        return list(map(operator.add, keys, map(tuple, values)))
    if values and min(map(min, values)) >= -MOST and max(map(max, values)) <= MOST:  # in C
        return list(map(operator.add, keys, map(tuple, values)))
    return [(*key, *within(counts)) for key, counts in zip(keys, values, strict=True)]


def _write_busy(
    conn: Connection,
    statements: Statements,
    busy: dict[tuple[int, str], list[tuple[int, int]]],
    calls: dict[tuple[int, str], int],
    zone: tzinfo | None,
) -> None:
    """Merge the minutes' busy pieces into their rows, then add what grew to their cells."""
    keys = sorted(busy)
    grown: dict[tuple[int, str], int] = {}
    updates: list[tuple[Any, ...]] = []
    if conn.dialect.name == "sqlite":
        # Writers take turns: each minute's row read, then written once, merged (an import
        # wrote most of its minutes twice, once to make sure the row was there).
        stored = _stored_busy(conn, statements, keys)
        rows = []
        for start, host in keys:
            seconds = start // 10**6
            intervals, had = stored.get((seconds, host), ("", 0))
            if pieces := busy[(start, host)]:
                intervals, grew = add_intervals(intervals, pieces)
                grown[(start, host)] = grew
                had += grew
            rows.append((seconds, host, intervals, had, calls.get((start, host), 0)))
        run(conn, statements.busy_whole.sql, rows)
    else:
        updates = _merge_busy(conn, statements, busy, calls, keys, grown)
    # Summed per quarter hour first: a day or month is a run of whole quarter hours.
    added: dict[tuple[int, str], list[int]] = {}
    for minute, host in keys:
        more, started = grown.get((minute, host), 0), calls.get((minute, host), 0)
        if more or started:  # pieces already covered add nothing
            sums = added.setdefault((minute - minute % QUARTER_US, host), [0, 0])
            sums[0] += more
            sums[1] += started
    cells = sorted(
        (int(grain), start // 10**6, host, *sums)
        for grain, summed in by_grain(added, BUSY_GRAINS, zone)
        for (start, host), sums in summed.items()
        if any(sums)
    )
    both = statements.busy_update_cells
    if updates and cells and both is not None:  # one round trip
        run_arrays(
            conn,
            both,
            [
                *arrays(updates, statements.busy_update.text),
                *arrays(cells, statements.busy_cells.text),
            ],
        )
        return
    run_rows(conn, statements.busy_update, updates)
    run_rows(conn, statements.busy_cells, cells)


def _merge_busy(
    conn: Connection,
    statements: Statements,
    busy: dict[tuple[int, str], list[tuple[int, int]]],
    calls: dict[tuple[int, str], int],
    keys: Sequence[tuple[int, str]],
    grown: dict[tuple[int, str], int],
) -> list[tuple[Any, ...]]:
    """Merge the busy pieces of ``keys`` (sorted), by how much each grew in ``grown``, where
    writers run at once (PostgreSQL): the rows locked, the updates of the merged ones to run
    (``busy_update``)."""
    # Make sure each row exists, count its calls and lock it, in key order (the rows of
    # these minutes alone: a writer of another server's calls in them waits for no one).
    claimed = run_rows(
        conn,
        statements.busy_claim,
        [(start // 10**6, host, "", 0, calls.get((start, host), 0)) for start, host in keys],
    )
    stored = {(start, host): (intervals, had) for start, host, intervals, had in claimed}
    updates = []
    for start, host in keys:
        if pieces := busy[(start, host)]:
            seconds = start // 10**6
            intervals, had = stored[(seconds, host)]
            merged, grew = add_intervals(intervals, pieces)
            grown[(start, host)] = grew
            updates.append((merged, had + grew, seconds, host))
    return updates


def _stored_busy(
    conn: Connection, statements: Statements, keys: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], tuple[str, int]]:
    """The stored intervals and busy time of ``keys`` (sorted), a few hundred minutes per query
    (SQLite, whose writers take turns)."""
    wanted = set(keys)
    minutes = sorted({start // 10**6 for start, _ in keys})
    stored: dict[tuple[int, str], tuple[str, int]] = {}
    for at in range(0, len(minutes), BUSY_READS[-1]):
        chunk = minutes[at : at + BUSY_READS[-1]]
        size = next(size for size in BUSY_READS if size >= len(chunk))
        chunk += [chunk[-1]] * (size - len(chunk))  # a few compiled statements serve all
        rows = run(conn, statements.busy_select[size].sql, tuple(chunk))
        for start, host, intervals, busy_us in rows:
            if (start * 10**6, host) in wanted:
                stored[(start, host)] = (intervals, busy_us)
    return stored


def apply(
    conn: Connection, spans: Iterable[SpanRecord], zone: tzinfo | None, sign: int = 1
) -> None:
    """Add ``spans`` (just inserted) to the rollups of a ledger in ``zone``, or take them out
    with ``sign=-1``."""
    delta = RollupDelta()
    for span in spans:
        delta.add(span, sign, busy=sign > 0)
    delta.write(conn, zone)


__all__ = [
    "BUSY",
    "BUSY_CELLS",
    "BUSY_GRAINS",
    "EACH_MODEL",
    "EVERYONE",
    "HISTOGRAMS",
    "MOST",
    "ROLLUPS",
    "RollupDelta",
    "apply",
    "lock_cells",
    "lock_for_spans",
    "within",
]
