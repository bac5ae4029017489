"""Keeping a ledger small and safe: pruning raw spans, backing the file up.

Pruning removes raw spans past a horizon and keeps the rollups, so reports of
pruned months do not change. Backup copies a live SQLite file with SQLite's
online backup API while gateways keep writing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, delete, or_, select, text
from sqlalchemy.exc import OperationalError

from ollama_meter._paths import discard, resolved, sync_folder, written_through
from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger._cells import DAY_US, Grain, floor_cell
from ollama_meter.ledger._deadline import bulk
from ollama_meter.ledger._meta import get_meta, ledger_zone, pruned_before, set_meta
from ollama_meter.ledger._rollup import lock_cells
from ollama_meter.ledger._types import from_us, to_us
from ollama_meter.ledger.models import SpanRow

if TYPE_CHECKING:
    from ollama_meter.ledger._ledger import Ledger


_EPOCH_DAY = date(1970, 1, 1).toordinal()

# -- retention ----------------------------------------------------------------------------


@dataclass
class PruneResult:
    cutoff: datetime
    removed: int
    bytes_before: int
    bytes_after: int
    free_bytes: int
    """Space freed inside the file but not given back (SQLite without incremental vacuum)."""
    stopped: bool = False
    """``stop`` said to stop between two pieces: spans before the cutoff may be left, and
    space not given back; the next prune goes on from there."""

    @property
    def reclaimed(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)


@bulk
def prune(
    ledger: Ledger,
    keep_days: int,
    *,
    now: datetime,
    vacuum: bool = False,
    chunk: int = 20_000,
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] | None = None,
) -> PruneResult:
    """Remove raw spans that started before midnight ``keep_days`` days ago; rollups stay.

    The horizon is recorded first (``pruned_before``), so reports know which raw spans
    may be gone; a prune that finds none to remove records none. Deletes go in chunks, each its own short transaction, so gateways keep
    writing. On SQLite freed pages go back to the disk when the file uses incremental
    vacuum (new ledgers do); ``vacuum`` converts an older file once (a full rewrite).

    ``stop`` is asked between pieces (each chunk of deletes, each step giving space back): a
    gateway that is stopping must not wait for a prune of millions of spans. What is done
    stays done (each piece is whole); the result says ``stopped``, and the next prune goes on.
    ``progress`` is told the spans each committed chunk removed.
    """
    if keep_days < 1:
        raise ValidationError("--keep-days must be at least 1")
    before = _size(ledger)
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
        # Midnight in the ledger's zone, so its day cells before the horizon are whole; days
        # by the calendar (now less keep_days * 24 h is a day off across a DST change).
        zone = ledger_zone(conn)
        today = now.astimezone(zone or UTC).date().toordinal()
        if today - keep_days < _EPOCH_DAY:  # back before 1970: no span is that old
            return PruneResult(from_us(0), 0, before, before, 0)
        day = date.fromordinal(today - keep_days)
        cutoff_us = floor_cell(
            Grain.DAY, to_us(datetime(day.year, day.month, day.day, tzinfo=zone or UTC)), zone
        )
        cutoff = from_us(cutoff_us)
        gone = _prunable(cutoff_us)
        # A horizon only when there is something to remove: else it would say days were
        # pruned that were not (export warns, a zone change is refused, imports skip them).
        found = conn.execute(select(SpanRow.id).where(*gone).limit(1)).first() is not None
        known = pruned_before(conn)
        if found and (known is None or known < cutoff_us):
            set_meta(conn, "pruned_before", str(cutoff_us))
    removed = 0
    while found:
        if stop():
            return PruneResult(cutoff, removed, before, _size(ledger), 0, stopped=True)
        with ledger.write() as conn:
            ids = select(SpanRow.id).where(*gone).limit(chunk)
            done = conn.execute(delete(SpanRow).where(SpanRow.id.in_(ids.scalar_subquery())))
        removed += done.rowcount
        if progress is not None:
            progress(done.rowcount)
        if done.rowcount < chunk:
            break
    try:
        free = _reclaim(ledger, vacuum=vacuum, stop=stop)
    except LedgerError as exc:  # the deletes are committed: say so, not only what failed
        raise LedgerError(
            f"removed {removed:,} span(s) started before {cutoff:%Y-%m-%d %H:%M} UTC, but "
            f"giving their space back to the disk failed: {exc}; then run the same prune "
            "again (it removes nothing more, and gives the space back)"
        ) from exc
    return PruneResult(cutoff, removed, before, _size(ledger), free, stopped=free > 0 and stop())


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
        SpanRow.started_at < cutoff,
        or_(
            SpanRow.ended_at.is_(None),
            SpanRow.ended_at <= cutoff,
            SpanRow.started_at < from_us(cutoff_us - DAY_US),
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


def _reclaim(ledger: Ledger, *, vacuum: bool, stop: Callable[[], bool]) -> int:
    """Give freed SQLite pages back to the disk, :data:`VACUUM_STEP_PAGES` a transaction;
    the bytes still free inside the file. A failure (a full disk, a lock held past the
    wait) is a LedgerError, as the ledger's own statements' are."""
    if ledger.path is None:
        return 0
    with ledger.failures_named(), ledger.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            return _give_back(raw, vacuum=vacuum, stop=stop)
        except sqlite3.Error as exc:  # the driver's own: SQLAlchemy saw none of these
            raise OperationalError("VACUUM, incremental_vacuum, wal_checkpoint", None, exc) from exc


def _give_back(raw: sqlite3.Connection, *, vacuum: bool, stop: Callable[[], bool]) -> int:
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
    _truncate_wal(raw)
    free = raw.execute("PRAGMA freelist_count").fetchone()[0]
    page = raw.execute("PRAGMA page_size").fetchone()[0]
    return int(free) * int(page)


TRUNCATE_TRIES = 20
"""Tries at truncating the WAL after a prune, :data:`TRUNCATE_PAUSE_S` apart, each giving up at
once when a writer or a reader of an older snapshot is there."""
TRUNCATE_PAUSE_S = 0.05


def _truncate_wal(raw: sqlite3.Connection) -> None:
    """Shrink the WAL the deletes grew (SQLite reuses it, but never shrinks it on its own).

    Never by waiting: a TRUNCATE checkpoint waits for each reader of an older snapshot (a
    long export, a report) to finish, and holds off every writer meanwhile, so gateways
    could not commit for as long as the busy timeout. A try that finds one there copies
    what it can and gives up; between tries, writers go on. A WAL left is reused.
    """
    wait = raw.execute("PRAGMA busy_timeout").fetchone()[0]
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        for _ in range(TRUNCATE_TRIES):
            busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return
            time.sleep(TRUNCATE_PAUSE_S)
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(wait)}")  # a pooled connection: as it was


# -- backup --------------------------------------------------------------------------------


def backup(
    ledger: Ledger, target: Path, *, progress: Callable[[int, int], None] | None = None
) -> int:
    """Copy a SQLite ledger to ``target`` with the online backup API; its size in bytes.

    The copy is one consistent snapshot, taken while other processes keep writing
    (WAL readers never block writers). It is written beside ``target`` and renamed
    into place, so a failed backup never leaves half a file under that name.
    """
    source = ledger.path
    if source is None:
        raise LedgerError("not a SQLite ledger; back PostgreSQL up with pg_dump")
    if not source.is_file():
        raise LedgerError(f"there is no ledger at {source}")
    try:
        named, through = resolved(target), written_through(target)
    except OSError as exc:  # links that loop
        raise LedgerError(f"could not back up {source} to {target}: {exc.strerror}") from None
    ledger_files = {Path(f"{resolved(source)}{end}") for end in ("", "-wal", "-shm", "-journal")}
    if named in ledger_files:
        # a copy renamed over the live WAL would hide the writers' last transactions
        raise ValidationError(
            f"{target} is the ledger itself or one of its files; give another file"
        )
    if through is not None and not through.is_file():
        raise ValidationError(
            f"{target} is a device or pipe, not a file: a backup is a SQLite file; give a "
            "file's path"
        )
    target = through or target
    _refuse_in_use(target)
    _sweep_killed(target)
    # A name of its own: two backups to one file at once (cron and a manual run) must not
    # copy into each other's temp file, nor rename the other's half into place.
    partial = _partial_name(target)
    # The ledger's own connection, through the checks every connection to it passes: a raw
    # one let SQLite replay a WAL another file left beside it (a backup restored over the
    # ledger while a killed gateway's WAL stayed) into the ledger, and the copy, and remove
    # it, where every other command refuses and changes nothing.
    with ledger.read() as conn:
        src = conn.connection.driver_connection
        assert isinstance(src, sqlite3.Connection)
        try:
            # Made here, so a folder that is not there says so (SQLite would say only
            # "unable to open database file", which reads as if the ledger could not be).
            # Its owner's until whole, then as private as the ledger it copies: made 0644
            # under the usual umask, a copy of a ledger kept from other users was readable
            # by all.
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            dst = sqlite3.connect(partial)
            try:
                # One step: the whole copy reads one snapshot, so it never restarts.
                src.backup(dst, pages=-1, progress=None if progress is None else _pages(progress))
                dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
            finally:
                dst.close()
            partial.chmod(stat.S_IMODE(source.stat().st_mode) & 0o666)
            partial.replace(target)
            sync_folder(target.parent)  # "backed up" is said of a copy a power cut keeps
        except (OSError, sqlite3.Error) as exc:
            _discard_copy(partial)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise LedgerError(f"could not back up {source} to {target}: {why}") from exc
        except BaseException:  # Ctrl-C, SIGTERM: no hidden copy the ledger's size left behind
            _discard_copy(partial)
            raise
    return target.stat().st_size


def _refuse_in_use(target: Path) -> None:
    """Refuse a target with a database's WAL, shared memory or rollback journal beside it.

    Those are there while a process has that database open (a gateway's ledger, given as
    the target by mistake), or after one was killed. The copy renamed over it left the
    database's users writing to a file no name leads to any more (a gateway's ledger gone
    with its spans), and SQLite would replay the WAL or journal left there into the copy.
    """
    beside = [Path(f"{target}{end}") for end in ("-wal", "-shm", "-journal")]
    if found := [path for path in beside if os.path.lexists(path)]:
        raise ValidationError(
            f"{found[0]} is beside {target}: that is a database some process has open (a "
            "ledger in use?), or had when it was killed, and a backup would replace it. Give "
            f"another file, or stop what uses {target} and move it and its "
            f"{', '.join(p.name.removeprefix(target.name) for p in found)} aside first"
        )


def ledger_file(url: str) -> Path | None:
    """The SQLite file ``url`` names (None for a server), read from the URL alone: opening
    the ledger would make its folder."""
    from sqlalchemy.engine import make_url

    from ollama_meter.ledger._engine import sqlite_path

    return sqlite_path(make_url(url))


def _discard_copy(partial: Path) -> None:
    """The temp copy and the rollback journal SQLite keeps beside it while it writes (a copy
    stopped half way, on a full disk say, leaves it there)."""
    discard(partial)
    discard(partial.with_name(f"{partial.name}-journal"))


_NAME_MAX = 255
"""The longest file name, in bytes, most file systems take."""


def _partial_name(target: Path) -> Path:
    """A temp name of this backup's own beside ``target``, within the longest name a folder
    takes with SQLite's ``-journal`` after it (a target name near it is cut short here)."""
    mark = f".{os.getpid()}.{secrets.token_hex(4)}.partial"
    room = _NAME_MAX - 1 - len(mark) - len("-journal")
    # The name's own bytes (os.fsencode): one that is not UTF-8 arrives with surrogates in it.
    head = os.fsdecode(os.fsencode(target.name)[:room])
    return target.with_name(f".{head}{mark}")


_STALE_S = 3600
"""How long a temp copy whose process is gone must have been left untouched to be swept."""


def _sweep_killed(target: Path) -> None:
    """Remove the temp copies that earlier backups to ``target`` left when killed (``kill
    -9``, a power cut: nothing ran to remove them), each the ledger's size.

    Only a copy whose process is gone from this host and that nobody wrote for an hour:
    a live backup's (here, or another host's on a shared folder) is written to all along.
    """
    name = os.fsencode(target.name)
    try:
        left = [*target.parent.glob(".*.partial"), *target.parent.glob(".*.partial-journal")]
    except OSError:
        return
    for path in left:
        head, _, rest = path.name[1:].removesuffix("-journal").rpartition(".partial")
        head, pid, _ = [*head.rsplit(".", 2), "", ""][:3]
        if rest or not head or not name.startswith(os.fsencode(head)) or not pid.isdigit():
            continue
        try:
            if time.time() - path.stat().st_mtime < _STALE_S:
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            discard(path)
        except OSError:  # alive under another user, or gone already: not ours to judge
            continue


def _pages(progress: Callable[[int, int], None]) -> Callable[[int, int, int], None]:
    return lambda status, remaining, total: progress(total - remaining, total)


def pg_dump_command(ledger: Ledger, target: Path) -> str:
    """The ``pg_dump`` command that backs up a PostgreSQL ledger (password left out): a
    ledger in a schema of its own (its sessions' current schema, asked of the server), that
    schema alone.

    A ledger shares a database with other apps in a schema of its own: a dump of the whole
    database failed for ometer's own role at the first table it may not read ("permission
    denied for schema hr"), and run by a superuser it put the other apps' tables, and their
    data, in the ledger's backup. A ledger in ``public`` (a database of its own) is dumped
    whole, as before: ``--schema public`` makes pg_restore fail on the ``public`` every new
    database has. Quoted for a POSIX shell: it is meant to be pasted, and a file name may
    hold anything; the schema as a pattern that matches its name alone.
    """
    import shlex

    from sqlalchemy.engine import URL, make_url

    from ollama_meter._urls import SECRET_QUERY

    with ledger.read() as conn:
        schema, spans = conn.execute(
            text("SELECT current_schema(), to_regclass(quote_ident(current_schema()) || '.spans')")
        ).one()
    if schema is None or spans is None:
        where = f"schema {schema}" if schema else "any schema (its search path names none there)"
        raise LedgerError(
            f"there is no ledger at {ledger.display_url} in {where}: nothing to back up"
        )
    url = make_url(ledger.url)
    query = {key: value for key, value in url.query.items() if key.lower() not in SECRET_QUERY}
    plain = URL.create(
        "postgresql", url.username, None, url.host, url.port, url.database, query
    ).render_as_string(hide_password=False)
    exact = '"' + str(schema).replace('"', '""') + '"'  # pg_dump reads it as a pattern
    alone = [] if schema == "public" else ["--schema", exact]
    return shlex.join(["pg_dump", "--format=custom", *alone, "--file", str(target), plain])
