"""Opening the ledger: engines tuned per backend, migrations applied on first use.

SQLite gets WAL (readers never block the writer), a busy timeout (several
processes take turns instead of failing) and explicit BEGIN so a transaction
that must write can say so up front (``BEGIN IMMEDIATE``) and never dead-locks
on a lock upgrade. PostgreSQL gets the isolation the ledger's writes are
written for (READ COMMITTED) whatever the server or role defaults to: under a
``default_transaction_isolation = serializable`` role, concurrent rollup upserts
and budget leases would fail each other instead of waiting their turn.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from ollama_meter._paths import (
    OPENING,
    default_data_dir,
    first_bytes,
    sqlite_url_problem,
    unreachable_ledger,
)
from ollama_meter._urls import UNESCAPED_AT, hide_password, unescaped_at
from ollama_meter.errors import ConfigError, LedgerError
from ollama_meter.ledger._beside import (
    make_folder,
    make_private,
    opened_by_sqlite,
    other_names,
    reading_alone,
    wal_files_like,
)
from ollama_meter.ledger._deadline import bounded_connect, in_bulk
from ollama_meter.ledger._migrate import numbered_as_ours
from ollama_meter.ledger._mounts import warn_network
from ollama_meter.ledger._pool import ClosingPool
from ollama_meter.ledger._session import hold_session_settings, session_options

DEFAULT_WAIT = 5.0
"""Seconds a ledger operation waits for a busy database (``OMETER_LEDGER_WAIT``)."""

log = logging.getLogger("ollama_meter.ledger")


IDLE_FLOOR = 5.0
"""Seconds a transaction of ours may sit idle on a PostgreSQL server, at least."""


def idle_seconds(wait: float) -> float:
    """How long the server lets one of our transactions sit idle before it ends the session.

    A process stopped inside a write (``kill -STOP``, a paused VM, a host lost mid-commit)
    holds the row locks of the rollups every write adds to: every other process's writes
    went to the spool until it ran again, or for a lost host until the server's TCP
    keepalive gave up (two hours by default). None of our transactions idles between two
    statements for anywhere near this; upkeep over many spans (:func:`in_bulk`) is exempt.
    """
    return max(wait, IDLE_FLOOR)


READ_IDLE_S = 60.0
"""Seconds a read transaction of ours may sit idle on a PostgreSQL server: it holds no row
lock for a write to wait on, and a report stalled on a busy machine (a load average of 10 on
two cores) was ended at :data:`IDLE_FLOOR` half way through its reads."""


def patient_read(conn: Connection) -> None:
    """Let the read transaction ``conn`` begins sit idle :data:`READ_IDLE_S` (upkeep's never
    ends: :func:`_bulk_begin`)."""
    if not in_bulk():
        conn.exec_driver_sql(
            f"SET LOCAL idle_in_transaction_session_timeout = {int(READ_IDLE_S * 1000)}",
            execution_options={"stream_results": False},
        )


def _bulk_begin(conn: Connection) -> None:
    if in_bulk():  # a rebuild computes between statements; an export waits on its reader
        # Never through a server-side cursor (an export streams through one: DECLARE ...
        # CURSOR FOR SET ... is a syntax error), whatever the connection's options say.
        conn.exec_driver_sql(
            "SET LOCAL idle_in_transaction_session_timeout = 0",
            execution_options={"stream_results": False},
        )


def lock_seconds(wait: float) -> float:
    """PostgreSQL's ``lock_timeout`` for ``wait``: a little under it, so that a lock another
    session holds ends the wait with the server's own answer, before the deadline on every
    answer (``_deadline``) takes the server for silent and stops asking it for a while."""
    return wait - min(wait / 5, 0.5)


def connect_seconds(wait: float) -> int:
    """libpq's ``connect_timeout`` for ``wait``: whole seconds, at least the 2 it honours."""
    return max(int(wait), 2)


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL, None for other backends and in-memory databases."""
    if not is_sqlite_file(url):
        return None
    assert url.database is not None
    return Path(url.database).expanduser()


def is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


FILE_ID = "ometer_file_id"
"""Where a SQLite connection's pool record keeps the identity of the file it opened."""


def file_id(path: Path) -> tuple[int, int] | None:
    """The identity (device, inode) of the file at ``path`` now; None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


_SMALLEST_DATABASE = 512
"""Bytes in the smallest SQLite database that holds anything: one page of the smallest size."""


def _refuse_too_short(dbapi_connection: Any, path: Path) -> None:
    """Refuse a file too short to be a SQLite database, and not empty: SQLite takes a one-byte
    file (``echo > ledger.db`` makes one) for an empty database, and it was made a ledger
    over its bytes. Raised as SQLite says it of a longer one, so it reads the same."""
    try:
        found = os.stat(path)
    except OSError:
        return  # none yet: SQLite makes it
    if stat.S_ISREG(found.st_mode) and 0 < found.st_size < _SMALLEST_DATABASE:
        dbapi_connection.close()
        raise sqlite3.DatabaseError("file is not a database")


_SQLITE = b"SQLite format 3\x00"
"""What a SQLite database's first bytes are."""

_WAL_HEADER = 32
"""Bytes of a WAL file's header; the frames, the changes it holds, come after it."""


def _refuse_foreign_wal(dbapi_connection: Any, path: Path) -> None:
    """Refuse a file with a ``-wal`` beside it that is not its own, before SQLite reads it.

    SQLite replays any WAL it finds beside a database: a backup copied over the ledger
    (``cp backup.db ledger.db``, going back to it) while a killed gateway's WAL stayed there
    took back the spans it was restored to be rid of, or was corrupted by them. A file whose
    header says it keeps a rollback journal (as ``ometer db backup`` writes its copy) made
    no WAL: switching to WAL writes the header first. So the WAL is looked at before the
    header, and one with frames beside such a file is another file's. So is one beside a
    file that is not SQLite's at all (another file renamed over a running gateway's ledger):
    SQLite read its pages from the old ledger's WAL, and wrote the calls there.
    """
    wal = Path(f"{path}-wal")
    try:
        if os.stat(wal).st_size <= _WAL_HEADER:
            return
        header = first_bytes(path, 20)  # not open(): its close drops this process's locks
    except OSError:
        return
    if not header or (header[18:20] == b"\x02\x02" and header.startswith(_SQLITE)):
        return  # a WAL ledger's, or an empty file (SQLite makes a database of it)
    dbapi_connection.close()
    if not header.startswith(_SQLITE):
        raise LedgerError(
            f"{path} is not a SQLite database: it is damaged or is not an ometer ledger, and "
            f"SQLite would take the WAL beside it ({wal}, another file's) for its pages; "
            f"nothing was changed. Move {path} aside to start a new ledger, or put a backup "
            f"in its place; and move {wal} and {path}-shm aside while no ometer uses the ledger"
        )
    raise LedgerError(
        f"{wal} is left from another file: {path} keeps no WAL (a backup copied over the "
        "ledger while a killed ometer's WAL stayed beside it?), and SQLite would replay that "
        f"WAL's changes into it; nothing was changed. Stop every ometer using the ledger, "
        f"move {wal} and {path}-shm aside, and run again"
    )


def _sqlite_opener(path: Path) -> Callable[..., Any]:
    """The ledger file made private if new, then opened while nothing of this process looks
    at its first bytes with a descriptor it will close (``_paths.OPENING``)."""

    def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        make_private(path)
        with OPENING:
            return dialect.connect(*cargs, **cparams)

    return connect


def _sqlite_connector(busy_timeout_ms: int, path: Path) -> Callable[[Any, Any], None]:
    def connect(dbapi_connection: Any, record: Any) -> None:
        _refuse_too_short(dbapi_connection, path)
        real = opened_by_sqlite(path)  # the -wal and -shm are beside it, not beside a link
        if named := other_names(real):
            dbapi_connection.close()
            raise LedgerError(f"cannot open the ledger at {path}: {named}")
        _refuse_foreign_wal(dbapi_connection, real)
        if alone := reading_alone(real):
            dbapi_connection.close()
            raise LedgerError(f"cannot read the ledger at {path}: {alone}")
        wal_files_like(real)
        _sqlite_setup(dbapi_connection, busy_timeout_ms)
        # A file removed or replaced later keeps this connection on the old one: a write
        # there would vanish with the process. The database checks this before each use.
        record.info[FILE_ID] = file_id(path)

    return connect


_TABLES = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"


def _new_or_ledger(cursor: Any) -> bool:
    """Whether the file is new (no table) or bears ometer's mark: a ``spans`` table and an
    Alembic revision numbered as ometer's are. A ``spans`` table alone is not (a tracing
    app's database has one): that file is refused later, and must not be changed first."""
    names = {row[0] for row in cursor.execute(_TABLES).fetchall()}
    if not names:
        return True
    if not {"spans", "alembic_version"} <= names:
        return False
    found = cursor.execute("SELECT version_num FROM alembic_version").fetchall()
    return len(found) == 1 and numbered_as_ours(str(found[0][0]))


WAL_KEPT_BYTES = 16 * 2**20
"""The most of a SQLite ledger's WAL kept on disk once a checkpoint has copied it all back
(the first write after it cuts the file to this): 4x what SQLite copies back at a time."""


def _sqlite_setup(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    # Take transaction control from pysqlite so BEGIN is ours to emit (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    # Only a file without tables can choose: a new ledger gives pages that pruning frees
    # back to the disk (`ometer db prune`); an older one needs one VACUUM for it.
    if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
        cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
    # WAL sticks to the file: switch once, not on every connection (the switch needs
    # the file to itself, so asking again while others write only invites "locked").
    # Only a new file or a ledger: another app's database is refused, never changed.
    journal = cursor.execute("PRAGMA journal_mode").fetchone()[0]
    if journal.lower() != "wal" and _new_or_ledger(cursor):
        cursor.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode loses nothing when a process dies, only on power loss.
    cursor.execute("PRAGMA synchronous = NORMAL")
    # SQLite never shrinks a WAL it reuses: one grown by a prune or an import beside a long
    # read (an export, a backup) kept that size while any process had the ledger open.
    cursor.execute(f"PRAGMA journal_size_limit = {WAL_KEPT_BYTES}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "")
    conn.exec_driver_sql(f"BEGIN {mode}".strip())


READ_ONLY = "25006"
"""PostgreSQL's SQLSTATE for a write in a read-only transaction (a standby, a read-only role)."""

QUERY_CANCELED = "57014"
"""PostgreSQL's SQLSTATE for a statement cancelled: by ``statement_timeout``, among others."""


def _session_settings_refused(context: ExceptionContext) -> None:
    """A statement refused for a setting its session took when it began (the database's or
    role's ``default_transaction_read_only``, ``statement_timeout``: ``ALTER ... SET``
    reaches only sessions that start after it) ends every pooled session, as a lost server
    does: kept, a session opened in a maintenance window refused each write until the
    process restarted, however long ago the setting was put back. The next session reads
    the settings as they are now."""
    found = context.original_exception
    state = getattr(found, "sqlstate", None)
    if state == READ_ONLY or (state == QUERY_CANCELED and "statement timeout" in str(found)):
        context.is_disconnect = True


_DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_damaged(exc: DBAPIError) -> bool:
    """Whether SQLite found the file damaged, or not a database at all."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DAMAGED


def _special(path: Path) -> bool:
    """Whether ``path`` (through any link) is there and is neither a file nor a folder."""
    try:
        mode = path.stat().st_mode
    except OSError:  # not there (a new ledger), or not to be judged here
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _data_dir() -> Path | None:
    """The user's data folder, None for a user without one (a ledger given needs none)."""
    try:
        return default_data_dir()
    except ConfigError:
        return None


def checked_url(url: str | URL) -> tuple[URL, Path | None]:
    """``url`` parsed, and the SQLite file it names (None for a server), once it is checked as
    a ledger's: SQLite or PostgreSQL, a file that is no device nor pipe. Makes nothing:
    :class:`LedgerError` saying what is wrong."""
    said = hide_password(str(url))  # the Python API's URL, not checked by Settings
    if isinstance(url, str) and unescaped_at(url):
        raise LedgerError(f"OMETER_DB_URL {said!r} {UNESCAPED_AT}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        raise LedgerError(f"OMETER_DB_URL {said!r} is not a database URL") from exc
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):  # SQLAlchemy speaks more; the ledger does not
        raise LedgerError(
            f"the ledger is kept in SQLite or PostgreSQL, not {backend}: give "
            "sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"
        )
    if problem := sqlite_url_problem(backend, parsed.database, bool(parsed.query)):
        raise LedgerError(
            f"{str(url)!r} {problem}; give a file, e.g. sqlite:////var/lib/ometer/ledger.db"
        )
    path = sqlite_path(parsed)
    if path is not None and (why := unreachable_ledger(path)):
        raise LedgerError(why)
    if path is not None and _special(path):
        # SQLite opens a device (/dev/null, a disk) to write a database onto it, and a named
        # pipe waits for a writer; either then fails as "disk I/O error", naming no cause.
        raise LedgerError(
            f"{path} is a device or pipe, not a ledger file: give a file's path, e.g. "
            "sqlite:////var/lib/ometer/ledger.db"
        )
    return parsed, path


def create_ledger_engine(url: str | URL, *, wait: float = DEFAULT_WAIT) -> Engine:
    """An engine for ``url`` with the settings the ledger relies on; creates a SQLite file's folder.

    ``wait`` bounds how long a statement waits for another writer's lock (SQLite's busy
    timeout, PostgreSQL's ``lock_timeout``), for one of the pool's connections, and for
    a PostgreSQL server to answer (connecting, and each round trip: see ``_deadline``).
    """
    parsed, path = checked_url(url)
    if path is not None and not path.parent.is_dir():
        try:
            make_folder(path.parent)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the ledger folder {path.parent}: {exc.strerror}; give a ledger "
                "in a folder ometer may write (OMETER_DB_URL, or --db)"
            ) from exc
        # Said for a folder a URL named (a typo would go unnoticed); ometer's own data folder
        # is made on every machine's first run, where a warning would be the first word.
        level = logging.INFO if path.parent == _data_dir() else logging.WARNING
        log.log(level, "created the folder %s for the ledger %s", path.parent, path.name)
    if path is not None:
        warn_network(opened_by_sqlite(path))
    options: dict[str, Any] = {}
    millis = max(int(wait * 1000), 1)
    bounded = parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg"
    if parsed.get_backend_name() == "postgresql":
        # pool_timeout: a caller waiting for one of the pool's connections waits no
        # longer than for the server itself.
        options.update(
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            pool_timeout=wait,
            isolation_level="READ COMMITTED",
        )
        if bounded:
            options["connect_args"] = {
                # A SQL_ASCII database declares no encoding: psycopg then hands back bytes,
                # and SQLAlchemy's first look failed before the ledger could say it refuses
                # one. UTF-8 on our side whatever PGCLIENTENCODING says; the server converts.
                "client_encoding": "UTF8",
                "connect_timeout": connect_seconds(wait),
                "options": session_options(
                    parsed,
                    f"-c lock_timeout={max(int(lock_seconds(wait) * 1000), 1)} "
                    f"-c idle_in_transaction_session_timeout={int(idle_seconds(wait) * 1000)}",
                    # The driver reads only ISO dates: a role's DateStyle = 'German' crashed
                    # every command that reads a time the server gives (budget status).
                    "-c DateStyle=ISO -c IntervalStyle=postgres",
                ),
            }
    if path is not None:
        options["pool_timeout"] = wait  # not 30 s: the wait a busy ledger gets, as above
    if path is not None or parsed.get_backend_name() == "postgresql":
        options["poolclass"] = ClosingPool  # what create_engine would take, kept closed
    try:
        engine = create_engine(parsed, **options)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        hint = (
            " Install the PostgreSQL driver with: pip install 'ollama-meter[postgres]'"
            if parsed.get_backend_name() == "postgresql"
            else ""
        )
        raise LedgerError(f"no database driver for {parsed.drivername!r}.{hint}") from exc
    if path is not None:
        event.listen(engine, "do_connect", _sqlite_opener(path))
        event.listen(engine, "connect", _sqlite_connector(millis, path))
        event.listen(engine, "begin", _sqlite_begin)
    if bounded:
        hold_session_settings(engine, options["connect_args"]["options"])
        connect = bounded_connect(wait)

        def do_connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            return connect(*cargs, **cparams)

        event.listen(engine, "do_connect", do_connect)
        event.listen(engine, "begin", _bulk_begin)
    if parsed.get_backend_name() == "postgresql":
        event.listen(engine, "handle_error", _session_settings_refused)
    return engine
