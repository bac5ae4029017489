"""A ledger database: its engine, transactions, and database failures named for a user.

Owns the connection side only: which transaction a caller gets (reads, and writes that
take SQLite's write lock up front), waiting out a busy database, and turning a driver's
failure into one :class:`LedgerError` that says what to do. What is written, and what
happens when writing fails, is above it."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    StatementError,
    TimeoutError as PoolTimeout,
)

from ollama_meter._forks import renew_after_fork
from ollama_meter._urls import hide_password
from ollama_meter.errors import LedgerError
from ollama_meter.ledger import _why
from ollama_meter.ledger._deadline import (
    AT_CONNECTION_LIMIT,
    SERVER_CHANGING,
    not_there,
    spooled_meanwhile,
)
from ollama_meter.ledger._engine import (
    DEFAULT_WAIT,
    FILE_ID,
    READ_ONLY,
    connect_seconds,
    create_ledger_engine,
    file_id,
    idle_seconds,
    is_damaged,
    lock_seconds,
    patient_read,
    sqlite_path,
)
from ollama_meter.ledger._glance import GLANCE_S, glances, postgresql_glance, sqlite_glance
from ollama_meter.ledger._migrate import HEAD_REVISION, current_revision, numbered_as_ours
from ollama_meter.ledger._sqlstates import (
    IDLED,
    LOCK_NOT_AVAILABLE,
    NO_SCHEMA,
    NOT_ALLOWED,
    SCHEMA_CHANGED,
    SQLITE_SCHEMA_CHANGED,
    once_more_if_ended,
    session_ended,
)
from ollama_meter.ledger._usage import schema_unseen
from ollama_meter.ledger._why import emptied, file_limit, full_disk, no_such, unwritable

log = logging.getLogger("ollama_meter.ledger")

T = TypeVar("T")


def is_content_error(exc: BaseException) -> bool:
    """A failure caused by what a span holds, not by the database being unavailable."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False
    # Raised while binding parameters: text that cannot be encoded, a value out of range.
    return isinstance(exc, StatementError | ValueError | TypeError | OverflowError)


class Database:
    """The database at ``url`` (any SQLAlchemy URL); each operation waits at most ``wait`` seconds."""

    def __init__(self, url: str, *, wait: float = DEFAULT_WAIT, retry_delay: float = 0.05) -> None:
        self.url = url
        self.engine = create_ledger_engine(url, wait=wait)
        self.disposed = False  # its owner closed it: background work on it stops
        self._sqlite = self.engine.dialect.name == "sqlite"
        self.wait = wait  # seconds an operation waits for a busy database (OMETER_LEDGER_WAIT)
        self._retry_delay = retry_delay
        self._file = sqlite_path(make_url(url))
        self._reopening = threading.Lock()
        self._known: tuple[int, int] | None = None
        """The identity of the file this database is (SQLite), from its first use on."""
        self._damaged = False  # SQLite found the file damaged, and no write succeeded since
        self._in_use = 0
        self._forking = False
        self._quiet = threading.Condition(threading.Lock())
        if self._sqlite:
            event.listen(self.engine, "checkout", self._checked_out)
            event.listen(self.engine, "checkin", self._checked_in)
        renew_after_fork(self)

    # -- a fork (see ``_forks``) -----------------------------------------------------------

    def _checked_out(self, *_: object) -> None:
        with self._quiet:
            while self._forking:
                self._quiet.wait()
            self._in_use += 1

    def _checked_in(self, *_: object) -> None:
        with self._quiet:
            self._in_use -= 1
            self._quiet.notify_all()

    def _before_fork(self) -> None:
        """Let the fork wait (``wait`` seconds at most) until no thread uses a connection.

        SQLite keeps what a process's connections to a file hold (locks, the WAL index) in
        structures the whole process shares: a child forked while a thread of its parent
        was inside a write inherited a lock no thread of it would ever release, and its
        every write waited ``wait`` seconds, then went to the spool."""
        if not self._sqlite:
            return  # a server's sessions are per connection: the child opens its own
        self._quiet.acquire()  # held across the fork: no connection is taken meanwhile
        self._forking = True
        self._quiet.wait_for(lambda: self._in_use == 0, timeout=self.wait)

    def _after_fork_in_parent(self) -> None:
        if self._sqlite:
            self._forking = False
            self._quiet.notify_all()
            self._quiet.release()

    def _after_fork(self) -> None:
        """A forked child opens connections of its own: one SQLite connection (or one
        PostgreSQL session) used by two processes is not safe. The parent's are left to it."""
        self.engine.dispose(close=False)
        self._reopening = threading.Lock()
        self._in_use = 0
        self._forking = False
        self._quiet = threading.Condition(threading.Lock())

    def on_new_file(self) -> None:
        """Called when the SQLite file was removed or replaced and connections now open
        whatever is at the path (a subclass makes it a ledger: schema, zone)."""

    @functools.cached_property
    def display_url(self) -> str:
        """The URL with any password hidden (its query's too), or the file path for SQLite."""
        path = self.path
        if path is not None:
            return str(path)
        return hide_password(make_url(self.url).render_as_string())

    @property
    def path(self) -> Path | None:
        return sqlite_path(make_url(self.url))

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction that sees the ledger at one moment, however many statements.

        A report adds rollup cells and subtracts raw spans at the window's edges in separate
        statements: under READ COMMITTED, a call committed between them was subtracted without
        having been added. SQLite's reads are one snapshot already; PostgreSQL's are at
        REPEATABLE READ, which a transaction that only reads never fails for."""
        with self.failures_named(), self._connect() as conn:
            if not self._sqlite:
                conn.execution_options(isolation_level="REPEATABLE READ")
                patient_read(conn)
            yield conn

    def reading(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one :meth:`read`, made again on a new session if the server ended this
        one under it (``pg_terminate_backend``): every named read of the ledger is one, so a
        gateway's call (its key, its model's history, its budgets) is not refused for it."""

        def once() -> T:
            with self.read() as conn:
                return work(conn)

        return once_more_if_ended(once)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self.failures_named(), self._connect() as conn:
            if self._sqlite:
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with sqlite_glance(conn) if self._sqlite else contextlib.nullcontext(), conn.begin():
                if not self._sqlite:
                    postgresql_glance(conn)
                yield conn
                if not self._same_file(conn):  # replaced while we wrote: roll back, keep the spans
                    raise LedgerError(
                        f"the ledger file {self._file} was removed or replaced during a write; "
                        "it is written again to the file there now"
                    )
            self._damaged = False

    def _connect(self) -> Connection:
        """A connection to the file at the ledger's path now (SQLite), not to one moved away.

        Deleting the file (``rm``), moving it aside (``mv``) or putting a restored copy in
        its place leaves open connections on the old file, where every write would be lost
        or land out of sight. Then the pool is emptied, and the file at the path is made a
        ledger (a new one, or the copy brought to the current schema) and opened.
        """
        if self._file is None or self._reopening.locked():
            return self.engine.connect()  # (or this thread is making the new file a ledger)
        if self._known is not None and file_id(self._file) != self._known:
            self._reopen(self._file)
        conn = self.engine.connect()
        opened = conn.connection.info.get(FILE_ID)
        if self._known is None:
            self._known = opened  # the first use: this is the file
        elif opened != self._known:  # pooled before another thread's reopen
            conn.invalidate()
            conn.close()
            conn = self.engine.connect()
        return conn

    def _reopen(self, path: Path) -> None:
        with self._reopening:
            if file_id(path) == self._known:
                return  # another thread got here first
            self.engine.dispose()
            self.on_new_file()  # said once it is a ledger: a file that is not says so, each try
            with self.engine.connect():  # the file exists from here, if on_new_file made none
                self._known = file_id(path)
            log.warning(
                "the ledger file %s was removed or replaced while ometer had it open; "
                "ometer now writes to the file at that path",
                path,
            )

    def _same_file(self, conn: Connection) -> bool:
        """Whether ``conn`` is open on the file at the ledger's path now."""
        if self._file is None:
            return True
        opened = conn.connection.info.get(FILE_ID)
        return opened is not None and opened == file_id(self._file)

    @contextlib.contextmanager
    def failures_named(self) -> Iterator[None]:
        """A database failure (server down, disk full, locked) leaves as one LedgerError."""
        try:
            yield
        except DBAPIError as exc:
            if is_content_error(exc):
                raise
            self._damaged = self._damaged or is_damaged(exc)
            raise LedgerError(
                f"the ledger at {self.display_url} failed: {self.explain(exc)}"
            ) from exc
        except PoolTimeout as exc:
            raise LedgerError(
                f"the ledger at {self.display_url} failed: every connection of this process "
                f"to it stayed busy for {self.wait:g} s (OMETER_LEDGER_WAIT); the server is "
                "slow to answer or this process is overloaded"
            ) from exc
        finally:
            if self._damaged:  # no connection outlives its use: a kept one read a copy put
                self.engine.dispose()  # over the file (cp) through its cache of the damaged one

    def explain(self, exc: DBAPIError) -> str:
        """The driver's message, and what to do when the cause is one a user can fix."""
        text = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        lowered, state = text.lower(), getattr(exc.orig, "sqlstate", None)
        # An import or a prune spools nothing: what failed is run again, not recorded later.
        meanwhile = spooled_meanwhile()
        if "malformed" in lowered or "not a database" in lowered:
            return (
                f"{text}: the file is damaged or is not an ometer ledger. Restore it from a "
                "backup (`ometer db backup FILE` makes one; a running gateway writes to the "
                f"copy from its next write), or move it aside to start a new ledger{meanwhile}"
            )
        if self._file is not None and ("unable to open" in lowered or "readonly" in lowered):
            return f"{text}: {unwritable(self._file)}{meanwhile}"
        if (
            self._file is not None
            and any(said in lowered for said in ("disk i/o error", "disk is full", "no space"))
            and (limit := file_limit(self._file))
        ):
            return f"{text}: {limit}{meanwhile}"
        if "disk is full" in lowered or "no space" in lowered:
            return f"{text}: free some disk space{meanwhile}"
        if (
            self._file is not None
            and "disk i/o error" in lowered
            and (full := full_disk(self._file))
        ):
            return f"{text}: {full}{meanwhile}"
        if "statement timeout" in lowered or "due to user request" in lowered:  # ometer sends none:
            return (  # a short statement_timeout running out between two statements says that
                f"{text}: the server's statement_timeout for this user (or an admin's cancel) "
                "stopped it; raise it (ALTER ROLE ... SET statement_timeout = '10min') or leave "
                "it unset for ometer"
            )
        if any(said in lowered for said in AT_CONNECTION_LIMIT):
            return (
                f"{text}: the server is at its connection limit (max_connections, or the "
                "user's CONNECTION LIMIT); each ometer process keeps up to 30, so raise the "
                f"limit or stop idle clients{meanwhile}"
            )
        if not self._sqlite and any(said in lowered for said in SERVER_CHANGING):
            return (
                f"{text}: the server is starting, restarting or stopping; run again in a "
                f"moment{meanwhile}"
            )
        if not self._sqlite and (wrong := not_there(lowered)):
            return f"{text}: {wrong}{meanwhile}"
        if "connection timeout expired" in lowered:  # the driver's connect_timeout
            return (
                f"{text}: the server did not answer within {connect_seconds(self.wait)} s "
                f"(OMETER_LEDGER_WAIT): it is stopped, overloaded or cut off, or is not a "
                f"PostgreSQL server (check the port in OMETER_DB_URL){meanwhile}"
            )
        if state == READ_ONLY:
            return (
                f"{text}: the database takes no writes (a hot standby, or "
                f"default_transaction_read_only is on); point OMETER_DB_URL at the primary"
                f"{meanwhile}"
            )
        if state == IDLED:  # the timeout ometer sets (_engine)
            return (
                f"{text}: this process sat silent inside a transaction for over "
                f"{idle_seconds(self.wait):g} s (stalled: an overloaded machine, a paused "
                f"process or VM); what it had not committed is undone: run it again{meanwhile}"
            )
        if session_ended(exc) or "closed the connection" in lowered:
            return (
                f"{text}: the server ended this session (a restart, or pg_terminate_backend); "
                f"what it had not committed is undone: run it again{meanwhile}"
            )
        if state in SCHEMA_CHANGED | {NO_SCHEMA} and (unseen := schema_unseen(self.engine, state)):
            return f"{text}: {unseen}{meanwhile}"
        if state in SCHEMA_CHANGED or (
            self._sqlite and any(said in lowered for said in SQLITE_SCHEMA_CHANGED)
        ):
            if self._file is not None and (empty := emptied(self._file)):
                return f"{text}: {empty}{meanwhile}"
            if newer := self._newer_revision():
                return (
                    f"{text}: a newer ometer upgraded the ledger to schema revision {newer} "
                    f"while this one ({HEAD_REVISION}) ran. Restart this process with the "
                    f"newer ometer (pip install -U ollama-meter){meanwhile}"
                )
            return (
                f"{text}: the ledger's schema was changed outside ometer (a table, column or "
                "index renamed, dropped or added by hand, its revision row edited, or the "
                "search path naming another schema); undo the change, or restore it from a "
                f"backup (`ometer db backup` makes one){meanwhile}"
            )
        if state == NOT_ALLOWED:
            return f"{text}: {_why.not_allowed(text, make_url(self.url).username)}"
        if not self._sqlite and (missing := no_such(text, make_url(self.url).username)):
            return f"{text}: {missing}{meanwhile}"
        if "is not currently accepting connections" in lowered:
            return (
                f"{text}: the database is closed to connections; open it (ALTER DATABASE ... "
                f"ALLOW_CONNECTIONS true), or give another in OMETER_DB_URL{meanwhile}"
            )
        if "password authentication failed" in lowered:
            return f"{text}: fix the password in OMETER_DB_URL (% as %25, @ as %40){meanwhile}"
        if is_lock_error(exc) and (why := glances()):
            return f"{text}: another process holds it, and this write did not wait for it: {why}"
        if is_lock_error(exc):
            held = self.wait if self._sqlite else lock_seconds(self.wait)
            return (
                f"{text}: another process held it for longer than {held:g} s "
                "(OMETER_LEDGER_WAIT); run again once it is done, or wait longer with "
                "OMETER_LEDGER_WAIT=60"
            )
        return text

    def _newer_revision(self) -> str | None:
        """The ledger's revision when a newer ometer's migration made it (its schema is then
        that ometer's, not changed by hand); None otherwise, or when it cannot be read."""
        try:
            found = current_revision(self.engine)
        except DBAPIError:
            return None
        newer = found is not None and numbered_as_ours(found) and found > HEAD_REVISION
        return found if newer else None

    def _retry_locked(self, action: Callable[[], object], failure: str) -> None:
        """Run ``action``, again with backoff while the database reports a lock.

        The busy timeout covers ordinary waits; SQLite still answers "locked" at once
        in a few races (a fresh file switching to WAL, a snapshot gone stale), and those
        pass on a second try. Retries stop once ``wait`` seconds have passed, or after
        PostgreSQL's lock timeout (a second try waited as long again); a glance
        (``_glance``) retries for as long as it waits. A session the server ended under
        ``action`` (:func:`session_ended`) gets one more try at once, on a new one: a span
        write ended so by a DBA or a pooler, the server answering still, went to the spool
        and reached the ledger only with a later write. ``action`` must be idempotent: the
        session may have ended after its COMMIT took effect, before the answer came (a span
        is recorded once by its id). Anything else, or the last try, is one LedgerError
        starting with ``failure``.
        """
        deadline = time.monotonic() + (GLANCE_S if glances() else self.wait)
        attempt = 0
        ended = False
        while True:
            attempt += 1
            try:
                action()
                return
            except (DBAPIError, LedgerError) as exc:
                if isinstance(exc, DBAPIError) and is_content_error(exc):
                    raise
                cause = exc if isinstance(exc, DBAPIError) else exc.__cause__
                if not ended and session_ended(cause):
                    ended = True
                    log.debug("%s: the server ended its session; once more", failure)
                    continue
                timed_out = isinstance(cause, DBAPIError) and is_lock_timeout(cause)
                locked = isinstance(cause, DBAPIError) and is_lock_error(cause) and not timed_out
                delay = self._retry_delay * 2 ** min(attempt, 6)
                if not locked or time.monotonic() + delay > deadline:
                    if isinstance(cause, DBAPIError):
                        raise LedgerError(f"{failure}: {self.explain(cause)}") from cause
                    raise
                log.debug("%s: database locked, try %d", failure, attempt)
                time.sleep(delay)

    def dispose(self) -> None:
        self.disposed = True
        self.engine.dispose()


def is_lock_timeout(exc: DBAPIError) -> bool:
    """Whether the server gave up on a lock after its ``lock_timeout`` (PostgreSQL's, which
    is OMETER_LEDGER_WAIT less a margin): the whole wait is spent, not a race to try again."""
    return getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


def is_lock_error(exc: DBAPIError) -> bool:
    if is_lock_timeout(exc):
        return True
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text
