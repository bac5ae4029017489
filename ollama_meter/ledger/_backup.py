"""Backing a SQLite ledger up: one consistent copy of the live file, written beside its
target and renamed into place; for PostgreSQL, the ``pg_dump`` command to run.

It reads the ledger through its own connection and never writes to it; the target it
replaces is only an earlier backup, never a database in use or a file of another kind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import sqlite3
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from ollama_meter._paths import (
    beside_database,
    cannot_write,
    discard,
    resolved,
    sweep_killed,
    sync_folder,
    temp_beside,
    written_through,
)
from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger._at_work import STOPPED
from ollama_meter.ledger._meta import IDENTITY, PLACE
from ollama_meter.ledger._why import file_limit, full_disk
from ollama_meter.ledger.models import LEDGER_META

if TYPE_CHECKING:
    from ollama_meter.ledger._ledger import Ledger


BACKUP_STEP_PAGES = 4096
"""Pages a step of the copy takes (16 MiB of 4 KiB pages) before it tells its progress."""


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
        raise LedgerError(
            f"could not back up {source} to {target}: {cannot_write(target, exc)}"
        ) from None
    ledger_files = {Path(f"{resolved(source)}{end}") for end in ("", "-wal", "-shm", "-journal")}
    if named in ledger_files:
        # a copy renamed over the live WAL would hide the writers' last transactions
        raise ValidationError(
            f"{target} is the ledger itself or one of its files; give another file"
        )
    # through a link to a file not there yet (latest.db -> a dated name) is that file, made
    if through is not None and os.path.lexists(through) and not through.is_file():
        raise ValidationError(
            f"{target} is a device or pipe, not a file: a backup is a SQLite file; give a "
            "file's path"
        )
    target = through or target
    if what := beside_database(target):  # another database's, emptied by a checkpoint
        raise ValidationError(
            f"{target} is {what}, not a backup: a backup written over it would take from that "
            "database what it holds there. Give another file"
        )
    _refuse_in_use(target)
    _refuse_no_backup(source, target)
    sweep_killed(target, ".partial", _BESIDE)
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
                # In steps, so a bar moves over a big file, all from one snapshot: the read
                # this transaction begins with holds it, and a step between two of which
                # another process commits neither sees that nor starts the copy again.
                conn.exec_driver_sql("SELECT 1 FROM sqlite_master LIMIT 1").all()
                src.backup(
                    dst,
                    pages=BACKUP_STEP_PAGES,
                    progress=None if progress is None else _pages(progress),
                )
            finally:
                dst.close()
            _rollback_mode(partial)
            dst = sqlite3.connect(partial)
            try:
                damage = damage_found(dst)
                if damage is None:
                    _unnamed(dst)
            finally:
                dst.close()
            if damage is not None:
                _discard_copy(partial)
                raise damaged(
                    source, damage, f"the copy is not kept, and {target} is left as it was"
                )
            partial.chmod(stat.S_IMODE(source.stat().st_mode) & 0o666)
            partial.replace(target)
            sync_folder(target.parent)  # "backed up" is said of a copy a power cut keeps
        except (OSError, sqlite3.Error) as exc:
            limit = file_limit(partial, "the copy")
            full = isinstance(exc, sqlite3.Error) and full_disk(partial) is not None
            _discard_copy(partial)
            if full or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # SQLite's words, as one
            why = cannot_write(target, exc) if isinstance(exc, OSError) else exc
            why = f"{why}: {limit}" if limit else why
            raise LedgerError(f"could not back up {source} to {target}: {why}") from None
        except BaseException:  # Ctrl-C, SIGTERM: no hidden copy the ledger's size left behind
            _discard_copy(partial)
            raise
    return target.stat().st_size


def _rollback_mode(copy: Path) -> None:
    """The copy, closed and not read yet, in rollback mode: a single self-contained file.

    The backup API copies the ledger's header as it is, with WAL mode's version bytes (18
    and 19), so the first read of the copy (its check) made a ``-wal`` and a ``-shm`` beside
    it: two files more than a backup keeps, which a disk with no inode to spare refused
    ("unable to open database file"), and which a backup killed while it checked left for
    good. No process has the copy open and its WAL holds nothing, so the bytes are all that
    ``PRAGMA journal_mode = DELETE`` would change; synced, as the copy's pages are."""
    fd = os.open(copy, os.O_RDWR)
    try:
        if os.pread(fd, 2, 18) == b"\x02\x02":
            os.pwrite(fd, b"\x01\x01", 18)
            os.fsync(fd)
    finally:
        os.close(fd)


def _unnamed(copy: sqlite3.Connection) -> None:
    """The copy without the ledger's id: it is another ledger. A gateway writing to it must
    not be taken for one writing to this one, or a client here would leave its calls' records
    to the copy; a copy restored in the ledger's place is given an id anew when first asked.

    A rebuild of the rollups under way (``db rollup --zone``) is the ledger's, not the
    copy's: the copy says it stopped, so the first process to open the copy finishes it. It
    named the live process rebuilding the ledger, and every process opening the copy waited
    for that rebuild to end (minutes on a big ledger) before doing it itself."""
    with contextlib.suppress(sqlite3.OperationalError):  # a ledger from before ledger_meta
        copy.execute(f"DELETE FROM {LEDGER_META.name} WHERE key IN (?, ?)", (IDENTITY, PLACE))
        copy.execute(
            f"UPDATE {LEDGER_META.name} SET value = ? WHERE key = ?", (STOPPED, "rebuilding")
        )
        copy.commit()


def damage_found(copy: sqlite3.Connection, tables: Sequence[str] = ()) -> str | None:
    """What SQLite finds wrong with the database (or with ``tables`` alone and their
    indexes), on one line; None when nothing.

    A page a failing disk or a torn write damaged is read by no statement that misses it, so
    the ledger works on. The backup API copies pages as they are: the damaged copy replaced
    last night's good one, said "backed up", and a job rotating its copies soon kept none
    worth restoring. A prune removed the raw spans that ``.recover`` and a rebuild give the
    damaged rollups back from. ``quick_check`` reads every page (not the indexes against
    their tables, which ``integrity_check`` adds at many times the cost).
    """
    checks = [f'PRAGMA quick_check("{table}")' for table in tables] or ["PRAGMA quick_check(3)"]
    try:
        found = [row[0] for check in checks for row in copy.execute(check)]
    except sqlite3.DatabaseError as exc:  # a page too damaged to walk: said as an error
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT:
            raise  # its progress handler said to stop: no damage found
        return str(exc)
    found = [row for row in found if row != "ok"]
    if not found:
        return None
    lines = [line for row in found for line in str(row).splitlines() if not line.startswith("***")]
    return "; ".join(lines[:3])


def damaged(source: Path, damage: str, done: str) -> LedgerError:
    """The ledger at ``source`` is damaged (:func:`damage_found`): ``done`` says what was not
    done, and the error what to do."""
    return LedgerError(
        f"the ledger at {source} is damaged (SQLite's quick_check: {damage}): {done}. Keep the "
        "ledger as it is (stop the gateways), and recover what it holds: sqlite3 "
        f"{shlex.quote(str(source))} .recover | sqlite3 recovered.db"
    )


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


_HEADER = b"SQLite format 3\x00"
_WAL = 2
"""The file format's write and read versions (bytes 18 and 19 of the header) in WAL mode."""


def _refuse_no_backup(source: Path, target: Path) -> None:
    """Refuse a target that is there and is not an earlier backup: a file of another kind, or
    a database in WAL mode, a ledger (ours are) that no process has open just now.

    Backups are in rollback mode (one self-contained file), so WAL mode tells a ledger from
    one. ``ometer db backup prod.db --db dev.db`` (the arguments the wrong way round) with
    the gateways stopped renamed dev.db's copy over prod.db, every span it held gone; a
    file mistaken for the source (``prices.toml``) was replaced as well. An empty file
    (``mktemp``'s) holds nothing to lose.
    """
    try:
        with target.open("rb") as file:
            header = file.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        # said as the write would say it (a file where a folder should be, a name too long)
        raise LedgerError(
            f"could not back up {source} to {target}: {cannot_write(target, exc)}"
        ) from None
    again = "a backup replaces only an earlier backup. Give another file, or move it aside first"
    if header and (len(header) < 100 or not header.startswith(_HEADER)):
        raise ValidationError(f"{target} is there and is not a SQLite database (a backup): {again}")
    if header and _WAL in header[18:20]:
        raise ValidationError(
            f"{target} is a ledger (a SQLite database in WAL mode, as ometer leaves every ledger it "
            f"opens), not a backup: {again}"
        )


def ledger_file(url: str) -> Path | None:
    """The SQLite file ``url`` names (None for a server), read from the URL alone: opening
    the ledger would make its folder."""
    from sqlalchemy.engine import make_url

    from ollama_meter.ledger._engine import sqlite_path

    return sqlite_path(make_url(url))


def ledger_place(url: str) -> tuple[str, bool]:
    """Where the ledger ``url`` names is, as ometer names it (its SQLite file, or the URL
    without its password), and whether a SQLite file is there (always True for a server):
    from the URL alone, checked as opening it checks it, making nothing."""
    from ollama_meter._urls import hide_password
    from ollama_meter.ledger._engine import checked_url

    parsed, path = checked_url(url)
    if path is None:
        return hide_password(parsed.render_as_string()), True
    return str(path), path.exists()


_BESIDE = ("-journal", "-wal", "-shm")
"""What SQLite makes beside a database: a copy has only its rollback journal now, and an
earlier ometer's copy a WAL and its shared memory while it was checked."""


def _discard_copy(partial: Path) -> None:
    """The temp copy and the rollback journal SQLite keeps beside it while it writes (a copy
    stopped half way, on a full disk say, leaves it there)."""
    for path in (partial, *(partial.with_name(f"{partial.name}{end}") for end in _BESIDE)):
        discard(path)


def _partial_name(target: Path) -> Path:
    """A temp name of this backup's own beside ``target``, with room for SQLite's
    ``-journal`` after it."""
    return temp_beside(target, ".partial", room=len("-journal"))


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
