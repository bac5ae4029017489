"""Bringing a ledger's schema to the current Alembic head.

Checking costs one small query, so every process can afford it at start-up;
Alembic itself is loaded only when there is something to do. Concurrent first
runs are serialised by the migration transaction (BEGIN IMMEDIATE on SQLite, an
advisory lock on PostgreSQL), so the losers find the work done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.resources import as_file, files

from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ollama_meter._forks import ChildLock
from ollama_meter.errors import LedgerError
from ollama_meter.ledger._deadline import unbounded
from ollama_meter.ledger._usage import shadowed, usage_problem

log = logging.getLogger("ollama_meter.ledger")

HEAD_REVISION = "0020"
"""The newest migration; a test keeps it equal to the head of ``migrations/versions``."""


def numbered_as_ours(revision: str) -> bool:
    """Whether ``revision`` is numbered as ometer's migrations are (``0016``), this ometer's
    or a newer one's; another Alembic app's are hashes."""
    return revision.isdigit() and len(revision) == len(HEAD_REVISION)


def current_revision(engine: Engine) -> str | None:
    """The ledger's schema revision, None for an empty database; connection failures raise."""
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError as exc:
            if conn.invalidated or "version" not in str(exc.orig).lower():
                raise  # not "no such table": the database itself failed
            conn.rollback()
            return None


MIGRATION_WAIT_S = 600.0
"""How long a process opening a ledger waits for another to migrate it (its schema lock)
before it gives up: a migration of millions of spans rewrites tables."""

_MARK = "spans"
"""The table every ometer ledger has had since its first revision."""


def newer_error(url: str, found: str) -> LedgerError:
    return LedgerError(
        f"the ledger at {url} has schema revision {found}, newer than this ometer's "
        f"{HEAD_REVISION}: a newer ometer wrote it. Upgrade ometer (pip install -U "
        "ollama-meter) on this machine too, or give another ledger with --db / OMETER_DB_URL"
    )


def check_is_ledger(conn: Connection, found: str | None, known: set[str]) -> None:
    """Refuse, before a migration writes anything, a database that is not an ometer ledger.

    An empty database becomes a ledger. One that holds tables is a ledger only with
    ometer's mark (an ``alembic_version`` and a ``spans`` table): another app's database
    (its own tables, maybe its own Alembic revision, even one numbered as ours) is never
    given a dozen tables beside its own. ``found`` is the database's revision, ``known``
    every revision of this ometer's migrations.
    """
    url = conn.engine.url.render_as_string()
    seen = inspect(conn)
    tables = sorted({*seen.get_table_names(), *seen.get_view_names()} - {"alembic_version"})
    if found is None and not tables:  # a new ledger
        _check_encoding(conn, url)
        _check_none_elsewhere(conn, url)
        return
    if found is not None and _MARK in tables:
        if found in known:
            return
        if numbered_as_ours(found) and found > HEAD_REVISION:
            raise newer_error(url, found)
    if found is None and {_MARK, "budgets"} <= set(tables) <= _ours():
        raise LedgerError(
            f"{url} holds an ometer ledger's tables but no schema revision (its "
            "alembic_version table is missing or empty: edited by hand, or restored in part); "
            "nothing was changed. Restore the whole ledger from a backup, or put back its "
            "alembic_version row as it was"
        )
    shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
    held = [f"tables ({shown})"] if tables else []
    held += [] if found is None else [f"Alembic revision {found}"]
    where = (
        "a new file"
        if conn.dialect.name == "sqlite"
        else "an empty database or schema (?options=-csearch_path%3Dometer)"
    )
    raise LedgerError(
        f"{url} is not an ometer ledger: it holds another application's {' and '.join(held)}; "
        f"nothing was changed. Give ometer's ledger, or {where}, with --db / OMETER_DB_URL"
    )


_WHOLE = (
    "http_status", "input_tokens", "output_tokens", "total_duration_ns", "load_duration_ns",
    "prompt_eval_duration_ns", "eval_duration_ns", "queue_ns", "latency_ns", "ttft_ns",
    "cost_tokens", "cost_compute", "cost_energy", "cost_fee", "cost_total", "price_rule_id",
)  # fmt: skip
"""The span columns of whole numbers: counts, nanoseconds, micro-units of money, a rule's id."""


def check_whole_numbers(conn: Connection) -> None:
    """Refuse, before a migration changes anything, a SQLite ledger's spans that hold a
    fraction or text where ometer keeps whole numbers (a hand edit, another tool's import).

    SQLite keeps what it is given in a column of integers (``1500.0`` and ``'250'`` become
    the integers they are; ``1500.5`` and ``'n/a'`` stay): the rollups an upgrade builds cut
    the fraction off without a word, and reading the span failed. PostgreSQL's columns take
    whole numbers only."""
    if conn.dialect.name != "sqlite":
        return
    present = {column["name"] for column in inspect(conn).get_columns(_MARK)}
    names = [name for name in _WHOLE if name in present]
    odd = " OR ".join(f"typeof(\"{name}\") NOT IN ('integer', 'null')" for name in names)
    listed = ", ".join(f'"{name}"' for name in names)
    rows = conn.execute(text(f"SELECT id, {listed} FROM spans WHERE {odd} LIMIT 6")).all()
    if not rows:
        return
    said = [
        f"span {row[0]!r} has "
        + ", ".join(
            f"{name} {value[:40] if isinstance(value, str | bytes) else value!r}"
            for name, value in zip(names, row[1:], strict=True)
            if value is not None and not isinstance(value, int)
        )
        for row in rows[:5]
    ]
    more = " and more" if len(rows) > 5 else ""
    raise LedgerError(
        f"the ledger at {conn.engine.url.render_as_string()} holds spans with a fraction or "
        f"text where ometer keeps whole numbers (tokens, nanoseconds, micro-units of money): "
        f"{'; '.join(said)}{more}; nothing was changed. Set each to the whole number it "
        'should be, or to NULL where the column allows it (sqlite3 LEDGER "UPDATE spans SET '
        "cost_total = 1500 WHERE id = '...'\"), or delete the span, then run ometer db "
        "upgrade again"
    )


def check_tables(engine: Engine) -> None:
    """Refuse a ledger at a revision whose tables are not all there (dropped or renamed by
    hand): ``ometer db upgrade`` said such a ledger was up to date. Not run at every start:
    the revision is all a process checks there (one small query)."""
    with engine.connect() as conn:
        missing = sorted(_ours() - set(inspect(conn).get_table_names()))
    if missing:
        raise LedgerError(
            f"the ledger at {engine.url.render_as_string()} lacks its table(s) "
            f"{', '.join(missing)}: the ledger's schema was changed outside ometer (dropped or "
            "renamed by hand); undo the change, or restore it from a backup (ometer db "
            "backup makes one)"
        )


def _ours() -> set[str]:
    """The tables of an ometer ledger at the head revision. A database holding only these,
    ``spans`` and ``budgets`` (every ledger's since 0002) among them, is a ledger: a tracing
    app's ``spans`` alone is not."""
    from ollama_meter.ledger.models import METADATA

    return set(METADATA.tables)


_ENCODINGS = ("UTF8",)
"""PostgreSQL server encodings that hold every name a call may carry. Not SQL_ASCII: it keeps
the bytes it is sent, but its columns count bytes, so a name in another script was refused
at a third or a quarter of its length in characters (a user of 50 Japanese characters)."""


def _check_encoding(conn: Connection, url: str) -> None:
    """Refuse to make a ledger in a PostgreSQL database whose encoding cannot hold every name:
    in LATIN1, say, a user, model or tag written in another script fails its write, and the
    span is kept only in the quarantine, out of every report and budget."""
    if conn.dialect.name != "postgresql":
        return
    encoding = str(conn.exec_driver_sql("SHOW server_encoding").scalar())
    if encoding.upper() not in _ENCODINGS:
        raise LedgerError(
            f"the database at {url} is encoded in {encoding}, which cannot hold every name a "
            "call may carry (a user, a model or a tag in any script); nothing was changed. "
            f"Make one with ENCODING 'UTF8' (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE "
            "template0) and give it with --db / OMETER_DB_URL"
        )


def check_ledger_encoding(engine: Engine, url: str) -> None:
    """Refuse a ledger already in a PostgreSQL database whose encoding cannot hold every name
    (restored by pg_restore into a LATIN1 database, or made before :func:`_check_encoding`):
    it opened, and a gateway served on while each call of a user in another script went to
    the quarantine. One ``SHOW`` a process, as it opens the ledger."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        encoding = str(conn.exec_driver_sql("SHOW server_encoding").scalar())
    if encoding.upper() not in _ENCODINGS:
        raise LedgerError(
            f"cannot open the ledger at {url}: its database is encoded in {encoding}, which "
            "cannot hold every name a call may carry (a user, a model or a tag in any "
            "script), and such a call would be kept out of the ledger; nothing was changed. "
            "Move it to a database made with ENCODING 'UTF8' (CREATE DATABASE ... ENCODING "
            "'UTF8' TEMPLATE template0; pg_dump this one and restore it there) and give that "
            "one with --db / OMETER_DB_URL"
        )


_LEDGERS_ELSEWHERE = text(
    "SELECT n.nspname FROM pg_namespace n WHERE n.nspname IS DISTINCT FROM current_schema() AND "
    "EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname = 'spans') "
    "AND EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid "
    "AND c.relname = 'alembic_version') ORDER BY n.nspname"
)


def _check_none_elsewhere(conn: Connection, url: str) -> None:
    """Refuse to make a new ledger in the schema a PostgreSQL role's search path names when
    another schema of the database holds one, unless the URL names the schema itself.

    A DBA moving the role's search path (``ALTER ROLE ... SET search_path``) had the next
    process make a new, empty ledger there, silently: its reports lacked every month
    before, and gateways started since wrote there while those started before wrote to
    the old one. A URL's ``?options=-csearch_path=...`` is a choice, and is taken."""
    from ollama_meter.ledger._spool_dir import search_path_in

    if conn.dialect.name != "postgresql" or search_path_in(conn.engine.url):
        return
    others = list(conn.execute(_LEDGERS_ELSEWHERE).scalars())
    if not others:
        return
    found = conn.execute(text("SELECT current_schema()")).scalar()
    here = f"schema {found} (the search path)" if found else "the search path (naming no schema)"
    raise LedgerError(
        f"cannot open the ledger at {url}: {here} holds no ledger, "
        f"but schema {', '.join(others)} of this database holds one: the role's or "
        "database's search_path was changed (ALTER ROLE ... SET search_path), and a new, "
        "empty ledger would be made beside it; nothing was changed. Put the search path back "
        "(ALTER ROLE ... RESET search_path), or name the ledger's schema in OMETER_DB_URL "
        f"(?options=-csearch_path%3D{others[0]}); to make a second ledger in another schema "
        "on purpose, name that one there"
    )


_ALEMBIC = ChildLock()
"""Alembic runs a migration through module globals (``alembic.context``, ``op``): two threads
migrating at once ran each other's (KeyError, or a half-made ledger taken for another app's
database). Processes take turns on the migration's own transaction instead."""


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` in one transaction.

    A ledger a newer ometer migrated is at a revision this one does not know: that
    is a clear error (upgrade ometer), never a guess at its schema.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    with as_file(files("ollama_meter._migrations")) as location:
        config = Config()
        config.set_main_option("script_location", str(location))
        try:
            # A migration may rewrite a big table: no deadline on the server's answers.
            with _ALEMBIC, unbounded(), engine.connect() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
        except DBAPIError as exc:
            raise LedgerError(
                f"could not migrate the ledger at {engine.url.render_as_string()}: "
                f"{exc.orig or exc}"
            ) from exc
        except CommandError as exc:
            found = current_revision(engine)
            if found is None or found <= HEAD_REVISION:
                raise
            raise newer_error(engine.url.render_as_string(), found) from exc


PG_MIGRATION_LOCK = 0x6F6D6574  # "omet"
"""The advisory lock every ometer process takes to make or migrate a PostgreSQL ledger."""


def check_revision_kept(conn: Connection) -> None:
    """Refuse, in a write's transaction, a ledger whose revision is no longer this ometer's.

    A newer ometer's migration may leave this version's inserts working and still change
    what its tables mean (0012 made rollup rows per model that a 0011 gateway never wrote):
    a gateway that went on writing as it knew how left the new rollups short of its calls.
    Read after the migration's lock (:func:`~ollama_meter.ledger._rollup.lock_cells`), so a
    migration under way has committed. The spans then wait in the spool for the newer ometer.
    """
    # Every write pays for it: the driver's SQL, with no statement to compile (~11 µs, not 25).
    revision_kept(conn, conn.exec_driver_sql(REVISION).scalar())


REVISION = "SELECT version_num FROM alembic_version"


def revision_kept(conn: Connection, found: str | None) -> None:
    """Refuse, as :func:`check_revision_kept` does, a ledger at revision ``found`` (read after
    the migration's lock, in the write's transaction) that is not this ometer's."""
    if found == HEAD_REVISION:
        return
    url = conn.engine.url.render_as_string()
    if found is not None and numbered_as_ours(found) and found > HEAD_REVISION:
        raise LedgerError(
            f"could not write to the ledger at {url}: a newer ometer upgraded the ledger to "
            f"schema revision {found} while this one ({HEAD_REVISION}) ran, and this one "
            "writes only a ledger of its own revision. Restart this process with the newer "
            "ometer (pip install -U ollama-meter); it records the spooled spans"
        )
    raise LedgerError(
        f"the ledger at {url} is at schema revision {found}, not this ometer's "
        f"{HEAD_REVISION}: its revision row was changed outside ometer (edited by hand, or "
        "restored apart from its tables); undo the change, or restore it from a backup "
        "(`ometer db backup` makes one)"
    )


_VERSION_TABLE = (
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
)
"""Alembic's own version table, as its ``stamp`` makes it."""


def lock_for_schema(conn: Connection) -> None:
    """Take the lock that makes processes change a ledger's schema one at a time: SQLite's
    write lock (the transaction begins IMMEDIATE), or PostgreSQL's advisory lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})


def create_at_head(engine: Engine) -> bool:
    """Make an empty database a ledger at the head revision in one transaction, as the
    migrations would leave it (a test compares the two, table by table); True when it did.

    Replaying every migration on nothing took 0.4 s and loaded Alembic; a new ledger is
    made each time a machine, a test or a fresh ``--db`` starts. A database that holds
    anything (a ledger, even a half-made one, or a stranger's tables) is left to
    :func:`upgrade`, which knows what to do with each.
    """
    from ollama_meter.ledger.models import METADATA

    options = {"sqlite_begin": "IMMEDIATE"} if engine.dialect.name == "sqlite" else {}
    with unbounded(), engine.connect().execution_options(**options) as conn, conn.begin():
        lock_for_schema(conn)
        seen = inspect(conn)
        if seen.get_table_names() or seen.get_view_names():
            return False  # made meanwhile, or not empty: the migrations judge it
        check_is_ledger(conn, None, set())
        METADATA.create_all(conn)
        conn.execute(text("INSERT INTO ledger_meta (key, value) VALUES ('rollups', 'current')"))
        conn.execute(text(_VERSION_TABLE))
        conn.execute(
            text("INSERT INTO alembic_version (version_num) VALUES (:head)"),
            {"head": HEAD_REVISION},
        )
    return True


def waiting_for_migration(make_current: Callable[[], None], engine: Engine, url: str) -> None:
    """Run ``make_current``, waiting while another process holds the schema lock of a ledger
    (one with a revision) that a migration may be bringing to the head.

    A migration holds that lock throughout: minutes on a big ledger. Gateways started
    together after an upgrade gave up after ``OMETER_LEDGER_WAIT`` ("database is locked": 3
    of 4 on a SQLite ledger of 200,000 spans); now they wait for it, as for a rebuild, and
    say so. A file whose revision cannot even be read (locked for good, a stranger's
    exclusive lock) or that holds none is no migration: that is the error it was.
    """
    from ollama_meter.ledger._database import is_lock_error

    deadline = time.monotonic() + MIGRATION_WAIT_S
    said = False
    while True:
        try:
            make_current()
            return
        except LedgerError as exc:
            cause = exc.__cause__
            locked = isinstance(cause, DBAPIError) and is_lock_error(cause)
            if not locked or time.monotonic() > deadline or not _has_revision(engine):
                raise
        if not said:
            log.warning(
                "waiting for another process to migrate the ledger at %s (it holds the schema "
                "lock; a big ledger takes minutes)",
                url,
            )
            said = True


def _has_revision(engine: Engine) -> bool:
    try:
        return current_revision(engine) is not None
    except DBAPIError:
        return False


def ensure_current(engine: Engine) -> bool:
    """Make a new ledger, or migrate one that is behind; True when either ran."""
    found = current_revision(engine)
    if found is not None:
        check_ledger_encoding(engine, engine.url.render_as_string())
        if elsewhere := shadowed(engine):  # unqualified statements would miss its tables
            raise LedgerError(
                f"cannot open the ledger at {engine.url.render_as_string()}: {elsewhere}"
            )
    if found == HEAD_REVISION:
        return False
    if found is None and (unusable := usage_problem(engine)):  # its tables hidden, or none made
        raise LedgerError(f"cannot open the ledger at {engine.url.render_as_string()}: {unusable}")
    if found is None and create_at_head(engine):
        return True
    upgrade(engine)
    return True
