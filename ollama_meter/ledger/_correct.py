"""Bringing stored rollup cells to what raw spans say, a few hundred rows per write transaction.

A rebuild (``_rebuild``) reads a day's spans and its stored cells in one snapshot and holds
no lock meanwhile (a read transaction: SQLite's WAL, PostgreSQL's REPEATABLE READ); this
module works out what each cell lacks or has too much (a :class:`Correction`) and writes it.
Sums and bins are corrected by adding the difference, so what writers add between the read
and the correction stays counted once (their upserts add too, and addition commutes). A
minute's busy intervals are a union, not a sum: the wanted ones are merged with the stored
ones when the correction is written. Each write transaction corrects at most
:data:`PIECE_ROWS` rows, so a gateway's write waits for one piece, never for a whole day.

A correction is right only against the cells it was worked out from: every piece checks,
and moves on, ``ledger_meta.rollup_pass`` (:class:`Pass`); a piece that finds another
rebuild's pass since the read raises :class:`Moved`, and the caller reads again. Nothing
here reads a day's spans inside a write, except the few minutes :func:`_minutes_from_spans`
names.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
)

from ollama_meter.ledger._cells import (
    BIN_COLUMNS,
    BUSY_US,
    DAY_US,
    DIMENSIONS,
    HISTOGRAM_KEY,
    MEASURES,
    Grain,
    busy_pieces,
    format_intervals,
    merge_intervals,
    parse_intervals,
)
from ollama_meter.ledger._meta import get_meta, set_meta
from ollama_meter.ledger._rollup import (
    BUSY,
    BUSY_CELLS,
    HISTOGRAMS,
    MOST,
    ROLLUPS,
    lock_cells,
    within,
)
from ollama_meter.ledger._signed import grouped_sums
from ollama_meter.ledger._span_rows import row_to_span
from ollama_meter.ledger._spans import select_spans
from ollama_meter.ledger._types import from_us
from ollama_meter.ledger._upserts import run, statements_for
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import NO_HOST

PIECE_ROWS = 500
"""Rows one write transaction of a rebuild corrects at most. A day of 100,000 calls held the
SQLite write lock for 7 s in one transaction (gateways' writes waited past
``OMETER_LEDGER_WAIT`` and went to the spool); a piece of this many rows takes milliseconds."""
YIELD_S = 0.1
"""On SQLite, the longest a rebuild leaves the write lock free between two pieces."""
PASS = "rollup_pass"
"""``ledger_meta`` key: changed by every piece a rebuild writes (see :class:`Pass`)."""

NEAR_CAP = MOST // 4
"""Sums from here on may reach :data:`MOST` with what writers add meanwhile. Below it,
adding the difference commutes with writers' additions, which stop at the cap too."""

Key = tuple[Any, ...]
Sums = dict[Key, list[int]]


class Moved(Exception):
    """Another rebuild corrected the rollups since these cells were read: read them again."""


@dataclass(frozen=True)
class Additive:
    """A rollup table whose rows are sums: its key columns and its summed columns."""

    table: Table
    keys: tuple[str, ...]
    values: tuple[str, ...]


CUBE = Additive(ROLLUPS, ("grain", "start", *DIMENSIONS), MEASURES)
BINS = Additive(HISTOGRAMS, ("grain", "start", *HISTOGRAM_KEY, "metric", "decade"), BIN_COLUMNS)
BUSY_SUMS = Additive(BUSY_CELLS, ("grain", "start", "host"), ("busy_us", "calls"))


class Pass:
    """What ``ledger_meta.rollup_pass`` said when this rebuild last read or wrote the rollups.

    Two rebuilds at once would each add the same difference (``db rollup`` run twice, or
    beside the one a migration asked for): a piece is written only if no other rebuild
    wrote one since this one read its cells.
    """

    def __init__(self) -> None:
        self.seen: str | None = None

    def read(self, conn: Connection) -> None:
        self.seen = get_meta(conn, PASS)

    def take(self, conn: Connection) -> None:
        if get_meta(conn, PASS) != self.seen:
            raise Moved
        self.seen = uuid.uuid4().hex
        set_meta(conn, PASS, self.seen)


@dataclass
class _Minute:
    key: tuple[int, str]
    """(start s, host)."""
    wanted: list[tuple[int, int]]
    """The union of the spans' busy pieces in the minute, as read."""
    more_calls: int
    """Calls the spans have that the stored row did not, as read (less: negative)."""
    stored: list[tuple[int, int]]
    """The stored intervals, as read."""


@dataclass
class Correction:
    """What to write so that the cells read become what the spans read say."""

    sums: list[tuple[Additive, Key, list[int] | None]] = field(default_factory=list)
    """Differences to add; None: none, but the row is one the spans do not have. Each row
    written that is left all zeros is removed (see :func:`_write_sums`)."""
    minutes: list[_Minute] = field(default_factory=list)
    near_cap: bool = False
    """A row corrected holds, or is to hold, a sum near :data:`MOST`: a writer's addition
    meanwhile may have stopped at the cap (a stale cell at it took nothing), so adding the
    difference is not exact. The caller reads the cells again once written, until a read
    finds nothing to correct (see :data:`NEAR_CAP`)."""
    resum: tuple[int, int] | None = None
    """A day (start s, end s) whose busy cells are summed again from its minutes, at the end."""

    @property
    def nothing(self) -> bool:
        """Whether writing it would change no cell."""
        return not (self.sums or self.minutes) and self.resum is None

    def add(self, kind: Additive, wanted: Sums, stored: Sums) -> None:
        found: list[tuple[Additive, Key, list[int] | None]] = []
        for key, values in wanted.items():
            want = list(within(values))  # as a write stores it
            have = stored.get(key)
            if have != want:  # compared in C: a rebuild of rollups that are right is mostly this
                difference = (
                    want if have is None else [a - b for a, b in zip(want, have, strict=True)]
                )
                found.append((kind, key, difference))
                self.near_cap = self.near_cap or max(want) >= NEAR_CAP or _high(have)
        for key in stored.keys() - wanted.keys():
            have = stored[key]
            found.append((kind, key, [-v for v in have] if any(have) else None))
            self.near_cap = self.near_cap or _high(have)
        self.sums += sorted(found, key=lambda item: item[1])  # writers lock rows in key order

    def add_minutes(
        self,
        wanted: dict[tuple[int, str], tuple[list[tuple[int, int]], int]],
        stored: dict[tuple[int, str], tuple[str, int, int]],
    ) -> None:
        for key in sorted(wanted.keys() | stored.keys()):
            intervals, calls = wanted.get(key, ([], 0))
            text, busy_us, had = stored.get(key, ("", 0, 0))
            same = (format_intervals(intervals), _length(intervals), calls) == (text, busy_us, had)
            if key in wanted and key in stored and same:
                continue
            self.minutes.append(_Minute(key, intervals, calls - had, parse_intervals(text)))


def _high(values: list[int] | None) -> bool:
    return values is not None and (max(values) >= NEAR_CAP or min(values) <= -NEAR_CAP)


def stored_sums(
    conn: Connection, kind: Additive, grains: Iterable[Grain], start: int, end: int
) -> Sums:
    """The stored rows of ``kind`` in cells of ``grains`` starting in [``start``, ``end``) s."""
    width = len(kind.keys)
    rows = conn.execute(_stored(kind, tuple(int(g) for g in grains)), {"low": start, "high": end})
    return {tuple(row[:width]): list(row[width:]) for row in rows}


@cache
def _stored(kind: Additive, grains: tuple[int, ...]) -> Select[Any]:
    """The query of :func:`stored_sums`, built once: a rebuild runs it three times a day read,
    and building it (and its cache key) took longer than running it."""
    table = kind.table
    return select(*(table.c[k] for k in kind.keys), *(table.c[v] for v in kind.values)).where(
        table.c.grain.in_(grains),
        table.c.start >= bindparam("low"),
        table.c.start < bindparam("high"),
    )


def summed_days(conn: Connection, kind: Additive, month: int, end: int) -> Sums:
    """The month's rows of ``kind`` as the sums of its days' (``month``, ``end`` in s)."""
    table, names = kind.table, kind.keys[2:]
    days = (table.c.grain == int(Grain.DAY), table.c.start >= month, table.c.start < end)
    width = len(names)
    rows = grouped_sums(
        conn, [table.c[k] for k in names], [table.c[v] for v in kind.values], filters=days
    )
    return {(int(Grain.MONTH), month, *row[:width]): [int(v) for v in row[width:]] for row in rows}


def stored_minutes(
    conn: Connection, start: int, end: int
) -> dict[tuple[int, str], tuple[str, int, int]]:
    """The busy minutes stored from ``start`` to ``end`` (s): intervals, busy µs, calls."""
    rows = conn.execute(_MINUTES, {"low": start, "high": end})
    return {(row[0], row[1]): (row[2], int(row[3]), int(row[4])) for row in rows}


_MINUTES = select(BUSY.c.start, BUSY.c.host, BUSY.c.intervals, BUSY.c.busy_us, BUSY.c.calls).where(
    BUSY.c.start >= bindparam("low"), BUSY.c.start < bindparam("high")
)


def write(
    write: Callable[[], Any],
    claim: Pass,
    correction: Correction,
    last: Callable[[Connection], None],
) -> int:
    """Write ``correction`` in pieces of at most :data:`PIECE_ROWS` rows; ``last`` goes in the
    last one (there is one even when nothing needs correcting). Returns how many pieces."""
    work: list[Any] = [*correction.sums, *correction.minutes]
    pieces = [work[at : at + PIECE_ROWS] for at in range(0, len(work), PIECE_ROWS)] or [[]]
    for number, piece in enumerate(pieces, 1):
        began = time.monotonic()
        with write() as conn:
            sqlite = conn.dialect.name == "sqlite"
            lock_cells(conn, alone=True)  # PostgreSQL: no writer merges a minute meanwhile
            claim.take(conn)
            _write_sums(conn, [item for item in piece if not isinstance(item, _Minute)])
            _write_minutes(conn, [item for item in piece if isinstance(item, _Minute)])
            if number == len(pieces):
                if correction.resum is not None:
                    _sum_busy_day(conn, *correction.resum)
                last(conn)
        if sqlite and number < len(pieces):
            # SQLite hands its lock to no one in particular: a writer waiting for it looks
            # again every 100 ms at most, and found the next piece holding it (one waited a
            # second). Left free as long as it was held, it finds a gap within a few looks.
            time.sleep(min(time.monotonic() - began, YIELD_S))
    return len(pieces)


def _write_sums(conn: Connection, items: Sequence[tuple[Additive, Key, list[int] | None]]) -> None:
    """Add the differences, then remove every row of them left all zeros.

    A row of zeros is one the spans do not have (a reference ledger never makes one): a
    stale row taken back to nothing, or a row whose difference met a writer's that took
    the same calls away since the read (``ometer reprice`` moving them to another
    currency leaves -x where the rebuild adds x). Removing a row of zeros changes no sum,
    so whatever a writer does meanwhile, it is right to remove; a row a writer added a
    call to since stays.
    """
    statements = statements_for(conn.dialect)
    upserts = {CUBE: statements.cube, BINS: statements.histogram, BUSY_SUMS: statements.busy_cells}
    for kind, upsert in upserts.items():
        rows = [(*key, *values) for which, key, values in items if which is kind and values]
        if rows:
            run(conn, upsert.sql, rows)
        cells = [key[:2] for which, key, _ in items if which is kind]
        if cells:  # one range of the key's index: the (grain, start) cells the piece wrote
            table, low, high = kind.table, min(cells), max(cells)
            cell = tuple_(table.c.grain, table.c.start)
            conn.execute(
                delete(table).where(
                    cell >= tuple_(literal(low[0]), literal(low[1])),
                    cell <= tuple_(literal(high[0]), literal(high[1])),
                    *(table.c[v] == 0 for v in kind.values),
                )
            )


def _write_minutes(conn: Connection, minutes: Sequence[_Minute]) -> None:
    """The minutes' rows as their spans make them, with what writers merged in since the read.

    Writers only ever add to a minute (a call's pieces merged in, its start counted), so
    when the stored intervals read held nothing the spans do not have, the wanted union
    merged with the stored one now is the union of every span's pieces. When they did (a
    span removed by hand), what a writer merged since cannot be told from them (a call
    recorded again covers the same time): such a minute is read again from its spans, here.
    """
    if not minutes:
        return
    keys = [m.key for m in minutes]
    low, high = min(k[0] for k in keys), max(k[0] for k in keys)
    now = stored_minutes(conn, low, high + 1)
    rows: dict[tuple[int, str], tuple[list[tuple[int, int]], int]] = {}
    doubtful = []
    for minute in minutes:
        text, _, calls = now.get(minute.key, ("", 0, 0))
        if merge_intervals([*minute.wanted, *minute.stored]) == minute.wanted:
            current = parse_intervals(text)
            rows[minute.key] = (
                merge_intervals([*minute.wanted, *current]),
                calls + minute.more_calls,
            )
        else:
            doubtful.append(minute.key)
            rows[minute.key] = ([], calls + minute.more_calls)
    if doubtful:
        for key, intervals in _minutes_from_spans(conn, doubtful).items():
            rows[key] = (intervals, rows[key][1])
    where = and_(BUSY.c.start == bindparam("k_start"), BUSY.c.host == bindparam("k_host"))
    conn.execute(delete(BUSY).where(where), [{"k_start": s, "k_host": h} for s, h in keys])
    fresh = [
        {
            "start": s,
            "host": h,
            "intervals": format_intervals(iv),
            "busy_us": _length(iv),
            "calls": c,
        }
        for (s, h), (iv, c) in sorted(rows.items())
        if iv or c
    ]
    if fresh:
        conn.execute(insert(BUSY), fresh)


SPANS_BUSY_IN = select_spans(content=False).where(
    SPANS.c.started_at >= bindparam("before"),
    SPANS.c.started_at < bindparam("high"),
    or_(SPANS.c.started_at >= bindparam("low"), SPANS.c.ended_at > bindparam("low")),
)
"""The spans that started from ``low`` to ``high``, and the day before's still busy at
``low`` (a call's busy time ends at most a day after it began: ``busy_interval``); built
once (with 30 columns, building it took longer than a day's read), run with
:func:`busy_in`."""


def busy_in(low: int, high: int) -> dict[str, Any]:
    """The values of :data:`SPANS_BUSY_IN` for ``low`` to ``high`` (µs)."""
    return {"before": from_us(low - DAY_US), "low": from_us(low), "high": from_us(high)}


def _minutes_from_spans(
    conn: Connection, keys: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], list[tuple[int, int]]]:
    """The union of the busy pieces of the spans in each of these minutes (s), now."""
    wanted = set(keys)
    low = min(start for start, _ in keys) * 10**6
    high = max(start for start, _ in keys) * 10**6 + BUSY_US
    pieces: dict[tuple[int, str], list[tuple[int, int]]] = {key: [] for key in keys}
    query = SPANS_BUSY_IN.where(
        SPANS.c.upstream_host.in_(sorted({host for _, host in keys} - {NO_HOST}))
    )
    for row in conn.execute(query, busy_in(low, high)):
        span = row_to_span(row)
        for cell, piece in busy_pieces(span):
            key = (cell // 10**6, span.upstream_host)
            if key in wanted:
                pieces[key].append(piece)
    return {key: merge_intervals(found) for key, found in pieces.items()}


def _sum_busy_day(conn: Connection, start: int, end: int) -> None:
    """The day's busy cells (``start``, ``end`` in s) as the sums of its minutes (all right now)."""
    conn.execute(
        delete(BUSY_CELLS).where(
            BUSY_CELLS.c.grain == int(Grain.DAY),
            BUSY_CELLS.c.start >= start,
            BUSY_CELLS.c.start < end,
        )
    )
    minutes = (
        select(
            literal(int(Grain.DAY)),
            literal(start),
            BUSY.c.host,
            func.sum(BUSY.c.busy_us),
            func.sum(BUSY.c.calls),
        )
        .where(BUSY.c.start >= start, BUSY.c.start < end)
        .group_by(BUSY.c.host)
    )
    names = ["grain", "start", "host", "busy_us", "calls"]
    conn.execute(insert(BUSY_CELLS).from_select(names, minutes))


def _length(intervals: Iterable[tuple[int, int]]) -> int:
    return sum(b - a for a, b in intervals)
