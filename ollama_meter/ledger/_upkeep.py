"""Keeping a ledger small: pruning raw spans and giving their space back to the disk.

Pruning removes raw spans past a horizon and keeps the rollups, so reports of
pruned months do not change. Backing the file up is ``_backup``'s.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, Connection, delete, func, or_, select, text
from sqlalchemy.exc import OperationalError

from ollama_meter._paths import resolved
from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger._backup import damage_found, damaged
from ollama_meter.ledger._budgets import ledger_now
from ollama_meter.ledger._cells import DAY_US, Grain, floor_cell
from ollama_meter.ledger._deadline import bulk
from ollama_meter.ledger._meta import get_meta, ledger_zone, pruned_before, set_meta
from ollama_meter.ledger._rollup import lock_cells
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger.models import (
    ROLLUP_BUSY,
    ROLLUP_BUSY_CELLS,
    ROLLUP_HISTOGRAMS,
    ROLLUPS,
    SPANS,
)
from ollama_meter.periods import day_of

if TYPE_CHECKING:
    from ollama_meter.ledger._ledger import Ledger


_EPOCH_DAY = date(1970, 1, 1).toordinal()

# -- retention ----------------------------------------------------------------------------


@dataclass
class PruneResult:
    cutoff: datetime | None
    """Spans that started before it were removed; None: ``stop`` said to stop before it was
    known (while the ledger's pages were read)."""
    removed: int
    bytes_before: int
    bytes_after: int
    free_bytes: int
    """Space freed inside the file but not given back (SQLite without incremental vacuum)."""
    stopped: bool = False
    """``stop`` said to stop between two pieces: spans before the cutoff may be left, and
    space not given back; the next prune goes on from there."""
    wal_bytes: int = 0
    """The SQLite WAL's size when another process kept it from being cut back (a read of an
    older snapshot under way: an export, a backup): it shrinks at a write after that read."""
    held_by: datetime | None = None
    """The newest span's start when the days were counted back from it rather than from the
    clock, whose day was later (a host clock far ahead, or a ledger idle for a while)."""
    ahead: tuple[int, datetime] | None = None
    """Spans that started more than :data:`AHEAD` after ``now``, and the latest start: a
    host whose clock ran ahead recorded them, in cells of days to come."""

    @property
    def reclaimed(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)

    def clock_note(self, keep_days: int) -> str | None:
        """What to tell the user when the days were counted back from the newest span, or
        spans started days after the clock."""
        if self.ahead is not None:
            count, latest = self.ahead
            return (
                f"{count:,} span(s) started more than a day after this clock's now, the latest "
                f"{latest:%Y-%m-%d %H:%M} UTC: a host whose clock ran ahead recorded them, and "
                "they count in those days' cells, not the days the calls were made; put that "
                "host's clock right (NTP)"
            ) + ("" if self.held_by is None else f"; {self._held(keep_days)}")
        if self.held_by is None:
            return None
        return self._held(keep_days)

    def _held(self, keep_days: int) -> str:
        assert self.held_by is not None
        return (
            f"the newest span started {self.held_by:%Y-%m-%d %H:%M} UTC, more than {keep_days} "
            "day(s) before this clock's today: kept the raw spans of the "
            f"{keep_days} day(s) before that span, not before the clock (a prune never removes "
            "the newest calls). If no call was metered since, that is all; if this host's "
            "clock is wrong (timedatectl), put it right"
        )


@bulk
def prune(
    ledger: Ledger,
    keep_days: int,
    *,
    now: datetime | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    vacuum: bool = False,
    chunk: int = 20_000,
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] | None = None,
    planned: Callable[[int], None] | None = None,
) -> PruneResult:
    """Remove raw spans that started before midnight ``keep_days`` days ago; rollups stay.

    The horizon is recorded first (``pruned_before``), so reports know which raw spans
    may be gone; a prune that finds none to remove records none. Deletes go in chunks, each its own short transaction, so gateways keep
    writing. On SQLite freed pages go back to the disk when the file uses incremental
    vacuum (new ledgers do); ``vacuum`` converts an older file once (a full rewrite).

    ``stop`` is asked between pieces (each chunk of deletes, each step giving space back): a
    gateway that is stopping must not wait for a prune of millions of spans. What is done
    stays done (each piece is whole); the result says ``stopped``, and the next prune goes on.
    ``progress`` is told the spans each committed chunk removed; ``planned``, before the
    first, about how many there are to remove (those that started before the cutoff: the few
    still busy after it stay), so a bar can say how far along it is.

    ``now``: the instant the days are counted back from, when the caller knows it. Else the
    ledger's clock (the PostgreSQL server's, :func:`ledger_now`; ``clock``, this host's, on
    SQLite), which may be wrong: the newest span's start when the clock's horizon would
    remove the newest span too (:func:`_newest_before`; the result's ``held_by`` says so). A horizon is for every process
    on the ledger and never moves back: a gateway whose host clock ran two days ahead (NTP not
    yet run, a VM resumed) set it two days into the future with ``--keep-days 1``, removed
    today's raw spans, and set aside every call the other gateways recorded until that day came.
    """
    if keep_days < 1:
        raise ValidationError("--keep-days must be at least 1")
    before = _size(ledger)
    kept = "nothing was pruned, since its raw spans are what its reports are given back from"
    if not check_pages(ledger, kept, stop=stop, tables=ROLLUP_TABLES):
        return PruneResult(None, 0, before, before, 0, stopped=True)
    with ledger.write() as conn:
        # Alone, as a rebuild's day is: one running waits for this, one starting sees it.
        lock_cells(conn, alone=True)
        if get_meta(conn, "rollups") == "stale":
            # A zone change cuts each day again, oldest first: days it has not reached yet
            # would keep the old zone's cells for good once their spans were gone.
            raise LedgerError(
                "the rollups are being cut again (ometer db rollup --zone, or the first open "
                "after an upgrade): prune once that is done, since the days it would prune "
                "could not be cut again after it"
            )
        if get_meta(conn, "rebuilding") is not None:
            # Run because the rollups lack spans (a bulk load, rows lost), it puts days
            # right oldest first: days it has not reached yet would keep rollups without
            # those spans for good once their raw spans were gone. A process that opens
            # the ledger finishes one stopped half way; a gateway's daily prune does not.
            raise LedgerError(
                "the rollups are being rebuilt from the raw spans (ometer db rollup): prune "
                "once that is done, since the days it would prune could not be rebuilt after "
                "it (ometer db rollup finishes a rebuild that stopped half way)"
            )
        # Midnight in the ledger's zone, so its day cells before the horizon are whole; days
        # by the calendar (now less keep_days * 24 h is a day off across a DST change).
        zone = ledger_zone(conn)
        held = None
        if now is None:
            now = ledger_now(conn, clock())
            held = _newest_before(conn, now)
        ahead = _ahead_of(conn, now)
        # The day holding now, not the wall clock's date: in Santiago's first hour after
        # the clock went back from 00:00 to 23:00 it read Saturday, and kept a day too many.
        today = day_of(now, zone or UTC).toordinal()
        if held is not None:
            newest = day_of(held, zone or UTC).toordinal()
            if newest < today - keep_days:  # the clock's horizon would take every span
                today = newest
            else:
                held = None
        if today - keep_days < _EPOCH_DAY:  # back before 1970: no span is that old
            return PruneResult(from_us(0), 0, before, before, 0, held_by=held, ahead=ahead)
        day = date.fromordinal(today - keep_days)
        cutoff_us = floor_cell(
            Grain.DAY, to_us(datetime(day.year, day.month, day.day, tzinfo=zone or UTC)), zone
        )
        cutoff = from_us(cutoff_us)
        gone = _prunable(cutoff_us)
        # A horizon only when there is something to remove: else it would say days were
        # pruned that were not (export warns, a zone change is refused, imports skip them).
        found = conn.execute(select(SPANS.c.id).where(*gone).limit(1)).first() is not None
        known = pruned_before(conn)
        if found and (known is None or known < cutoff_us):
            set_meta(conn, "pruned_before", str(cutoff_us))
    if found and planned is not None:
        with ledger.read() as conn:  # the started_at index alone: no row is read
            planned(
                conn.execute(select(func.count()).select_from(SPANS).where(gone[0])).scalar_one()
            )
    removed = 0
    while found:
        if stop():
            return PruneResult(
                cutoff, removed, before, _size(ledger), 0, stopped=True, held_by=held, ahead=ahead
            )
        with ledger.write() as conn:
            ids = select(SPANS.c.id).where(*gone).limit(chunk)
            done = conn.execute(delete(SPANS).where(SPANS.c.id.in_(ids.scalar_subquery())))
        removed += done.rowcount
        if progress is not None:
            progress(done.rowcount)
        if done.rowcount < chunk:
            break
    try:
        free, wal = _reclaim(ledger, vacuum=vacuum, stop=stop)
    except LedgerError as exc:  # the deletes are committed: say so, not only what failed
        raise LedgerError(
            f"removed {removed:,} span(s) started before {cutoff:%Y-%m-%d %H:%M} UTC, but "
            f"giving their space back to the disk failed: {exc}; then run the same prune "
            "again (it removes nothing more, and gives the space back)"
        ) from exc
    stopped = free > 0 and stop()
    return PruneResult(cutoff, removed, before, _size(ledger), free, stopped, wal, held, ahead)


ROLLUP_TABLES = tuple(t.name for t in (ROLLUPS, ROLLUP_HISTOGRAMS, ROLLUP_BUSY, ROLLUP_BUSY_CELLS))
"""What a prune reads the pages of first: the rollups its removed spans are the source of.
A damaged page of spans it removes fails its delete, and one of spans it keeps does no
harm; reading the rollups alone is a sixth of the file at 10M spans (70 of 424 B a span)."""

CHECK_STEPS = 10_000_000
"""SQLite's steps of the read of every page between two looks at ``stop``: about a sixth of
a second here (a 70 MB ledger took 51M steps, 0.86 s); a small ledger's read asks none."""


def check_pages(
    ledger: Ledger,
    done: str,
    *,
    stop: Callable[[], bool] = lambda: False,
    tables: Sequence[str] = (),
) -> bool:
    """A LedgerError saying ``done`` (what was not done) for a SQLite ledger with a damaged
    page, before upkeep changes anything; False when ``stop`` said to stop first.

    Such a ledger answers every statement that misses the page. Its raw spans are what
    ``.recover`` and ``ometer db rollup`` give back a damaged page of rollups from: a prune
    removed the spans of days whose rollups were then their only, damaged, record, and a
    rebuild that met the page stopped half way, which every command then tried to finish
    first, and failed. SQLite's ``quick_check``, a read holding no lock (0.36-0.43 s for a
    70 MB ledger), stopped with the prune (a gateway told to stop does not wait for it).
    ``tables``: those alone (and their indexes), else every page."""
    if ledger.path is None:
        return True
    raised: list[BaseException] = []

    def stopping() -> int:  # what it raises (Ctrl-C's KeyboardInterrupt) sqlite3 would drop
        try:
            return int(stop())
        except BaseException as exc:
            raised.append(exc)
            return 1

    with ledger.failures_named(), ledger.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.set_progress_handler(stopping, CHECK_STEPS)
        try:
            damage = damage_found(raw, tables)
        except sqlite3.OperationalError:  # interrupted: stopped, or Ctrl-C
            if raised:
                raise raised[0] from None
            if not stop():
                raise
            return False
        finally:
            raw.set_progress_handler(None, 0)  # a pooled connection: as it was
    if damage is not None:
        raise damaged(ledger.path, damage, done)
    return True


AHEAD = timedelta(days=1)
"""How far past a prune's now a span may start before it is said to be stamped ahead."""


def _ahead_of(conn: Connection, now: datetime) -> tuple[int, datetime] | None:
    """Spans that started more than :data:`AHEAD` after ``now``, and the latest start."""
    count, latest = conn.execute(
        select(func.count(), func.max(SPANS.c.started_at)).where(SPANS.c.started_at > now + AHEAD)
    ).one()
    return (int(count), latest) if count else None


def _newest_before(conn: Connection, now: datetime) -> datetime | None:
    """The newest span's start when it is before ``now``, else None.

    Days are counted back from it when the clock's horizon would take every span, the newest
    too: a host whose clock read a year ahead (a dead RTC battery, a VM restored from an old
    snapshot with its clock set by hand) removed every span of the last year, and set a
    horizon a year ahead, so every call recorded after the clock was put right was set aside
    as before it. The newest N days of calls always stay; a ledger idle for longer than N days
    keeps them until calls come again (the clock alone cannot tell the two apart).
    """
    newest = conn.execute(select(func.max(SPANS.c.started_at))).scalar_one()
    return newest if newest is not None and newest < now else None


def _prunable(cutoff_us: int) -> list[ColumnElement[bool]]:
    """Spans that started before the cutoff, except the calls still busy after it.

    Ollama's busy time of a call ends when the call did, up to a day after it began, so a
    call begun before the horizon may be busy in the horizon's day. Rebuilding that day
    (``ometer db rollup``) counts it from the call's raw span, as it does each day's from
    the day before's: without it the day's utilisation lost that time. Those few spans
    stay until a later prune's horizon passes them.
    """
    cutoff = from_us(cutoff_us)
    return [
        SPANS.c.started_at < cutoff,
        or_(
            SPANS.c.ended_at.is_(None),
            SPANS.c.ended_at <= cutoff,
            SPANS.c.started_at < from_us(cutoff_us - DAY_US),
        ),
    ]


def _size(ledger: Ledger) -> int:
    """The ledger's size on disk: the SQLite file and its WAL, or PostgreSQL's tables."""
    path = ledger.path
    if path is not None:
        with contextlib.suppress(OSError):  # the WAL is beside the file a link names
            path = resolved(path)
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    with ledger.read() as conn:
        if conn.dialect.name != "postgresql":
            return 0
        return int(
            conn.execute(
                text(  # the ledger's own tables: not the catalogs, nor another schema's
                    "SELECT coalesce(sum(pg_total_relation_size(oid)), 0) FROM pg_class "
                    "WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace"
                )
            ).scalar_one()
        )


VACUUM_STEP_PAGES = 8192
"""Freed pages given back to the disk per transaction (32 MiB of 4 KiB pages, a fraction of a
second): a prune of millions of spans frees gigabytes, and giving them back at once held
the write lock for as long, the gateways' spans going to the spool meanwhile."""


def _reclaim(ledger: Ledger, *, vacuum: bool, stop: Callable[[], bool]) -> tuple[int, int]:
    """Give freed SQLite pages back to the disk, :data:`VACUUM_STEP_PAGES` a transaction;
    the bytes still free inside the file, and the WAL's size if it could not be cut back
    (else 0). A failure (a full disk, a lock held past the
    wait) is a LedgerError, as the ledger's own statements' are."""
    if ledger.path is None:
        return 0, 0
    with ledger.failures_named(), ledger.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            return _give_back(raw, vacuum=vacuum, stop=stop)
        except sqlite3.Error as exc:  # the driver's own: SQLAlchemy saw none of these
            raise OperationalError("VACUUM, incremental_vacuum, wal_checkpoint", None, exc) from exc


def _give_back(
    raw: sqlite3.Connection, *, vacuum: bool, stop: Callable[[], bool]
) -> tuple[int, int]:
    if vacuum and not stop() and raw.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        raw.execute("PRAGMA auto_vacuum = INCREMENTAL")
        raw.execute("VACUUM")  # once: from now on freed pages can be released
    if raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        # It frees one page per step, and the driver's execute() steps once:
        # executescript() runs it to the end; each its own transaction, writers between.
        left = raw.execute("PRAGMA freelist_count").fetchone()[0]
        while left > 0 and not stop():
            raw.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES});")
            now_left = raw.execute("PRAGMA freelist_count").fetchone()[0]
            if now_left >= left:  # nothing more would go (another process holds it)
                break
            left = now_left
    held = _truncate_wal(raw)
    free = raw.execute("PRAGMA freelist_count").fetchone()[0]
    page = raw.execute("PRAGMA page_size").fetchone()[0]
    return int(free) * int(page), held


TRUNCATE_TRIES = 20
"""Tries at truncating the WAL after a prune, :data:`TRUNCATE_PAUSE_S` apart, each giving up at
once when a writer or a reader of an older snapshot is there."""
TRUNCATE_PAUSE_S = 0.05


def _truncate_wal(raw: sqlite3.Connection) -> int:
    """Shrink the WAL the deletes grew (SQLite reuses it, but never shrinks it on its own);
    0, or the size left when another process kept it (the ledger's ``journal_size_limit``
    cuts it back at a write once that process is done).

    Never by waiting: a TRUNCATE checkpoint waits for each reader of an older snapshot (a
    long export, a report) to finish, and holds off every writer meanwhile, so gateways
    could not commit for as long as the busy timeout. A try that finds one there copies
    what it can and gives up; between tries, writers go on. A WAL left is reused.
    """
    wait = raw.execute("PRAGMA busy_timeout").fetchone()[0]
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        for _ in range(TRUNCATE_TRIES):
            busy, frames, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return 0
            time.sleep(TRUNCATE_PAUSE_S)
        page = int(raw.execute("PRAGMA page_size").fetchone()[0])
        return 32 + max(0, int(frames)) * (24 + page)  # the WAL's header and its frames
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(wait)}")  # a pooled connection: as it was
