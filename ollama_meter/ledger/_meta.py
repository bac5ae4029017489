"""Facts about the ledger itself, kept in ``ledger_meta``: its zone, where raw spans were pruned,
whether rollups need a rebuild, its identity."""

from __future__ import annotations

import secrets
from datetime import tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Table, delete, text

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._deadline import spooled_meanwhile
from ollama_meter.ledger._upserts import run
from ollama_meter.ledger.models import LEDGER_META

META: Table = LEDGER_META


def get_meta(conn: Connection, key: str) -> str | None:
    if not conn.in_transaction():  # through SQLAlchemy: its BEGIN (SQLite's is ours) first
        value = conn.execute(_SELECT_TEXT, {"key": key}).scalar()
        return None if value is None else str(value)
    # Straight on the driver: every span's write reads the zone and the prune horizon, and
    # SQLAlchemy's work around a text() statement took longer than the lookup (37 µs, 5 µs).
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    rows = run(conn, _SELECT.format(mark), (key,))
    return None if not rows or rows[0][0] is None else str(rows[0][0])


def set_meta(conn: Connection, key: str, value: str | None) -> None:
    """Set ``key`` (None removes it); one statement, so processes setting it at once never
    meet on the key (a delete then an insert did: "duplicate key" on PostgreSQL)."""
    if value is None:
        conn.execute(delete(META).where(META.c.key == key))
        return
    conn.execute(_UPSERT, {"key": key, "value": value})


_SELECT = f'SELECT "value" FROM {META.name} WHERE "key" = {{}}'
_SELECT_TEXT = text(_SELECT.format(":key"))  # parsed once: a rebuild reads a fact every day
"""Driver SQL, not a select() built anew: building the statement and its cache key took
twice as long as running it."""
_UPSERT = text(
    f'INSERT INTO {META.name} ("key", "value") VALUES (:key, :value) '
    'ON CONFLICT ("key") DO UPDATE SET "value" = excluded."value"'
)
"""SQLite and PostgreSQL spell it alike."""
_LOCK_IDENTITY = text(f'SELECT "value" FROM {META.name} WHERE "key" = :key FOR UPDATE')
_ADD = text(
    f'INSERT INTO {META.name} ("key", "value") VALUES (:key, :value) ON CONFLICT ("key") DO NOTHING'
)
"""Set unless set: the first process to name the ledger names it for all."""

IDENTITY = "ledger_id"


def ledger_identity(conn: Connection, *, make: bool) -> str | None:
    """The ledger's own id: random, unguessable, the same for every process that writes to it.

    A gateway names it on its answers (``X-Ometer-Ledger``): an ometer client whose ledger it
    is leaves the call's record to the gateway. ``make``: give the ledger one if it has none
    (None otherwise). Not a secret, but never guessed: knowing it lets an answer spare a client
    its own span of the call, nothing else.
    """
    found = get_meta(conn, IDENTITY)
    if found is not None or not make:
        return found
    conn.execute(_ADD, {"key": IDENTITY, "value": secrets.token_hex(16)})
    return get_meta(conn, IDENTITY)


def identity_place(conn: Connection) -> str | None:
    """The place the ledger's id was placed in (:func:`placed_identity`); None: not placed."""
    return get_meta(conn, PLACE)


PLACE = "ledger_file"
"""Where the ledger's id was made (or first read): the inode of its SQLite file, or its
PostgreSQL database's :func:`database_place`."""

_DATABASE = text(
    "SELECT d.oid::text, (SELECT c.relnamespace::text FROM pg_catalog.pg_class AS c "
    f"WHERE c.oid = to_regclass('{META.name}')), "
    "has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE') "
    "FROM pg_catalog.pg_database AS d WHERE d.datname = current_database()"
)
_CLUSTER = text("SELECT system_identifier::text FROM pg_catalog.pg_control_system()")


def database_place(conn: Connection) -> str | None:
    """Where in PostgreSQL the ledger is, as no copy of it is: its server's system identifier
    (made by ``initdb``, kept by its standbys), its database's OID and its schema's.

    ``pg_dump`` and ``pg_restore`` into another database (or ``CREATE DATABASE ... TEMPLATE``)
    give another database OID; into another server's, whose first database has the same OID as
    often as not, another system identifier; into another schema of the same database, another
    schema OID. Renaming the database or the schema, a failover to a standby, a restart keep
    all three. None where the role may not read the system identifier (some hosted servers):
    the id is then kept wherever it is, as before."""
    database, schema, readable = conn.execute(_DATABASE).one()
    if not readable:
        return None
    return f"{conn.execute(_CLUSTER).scalar_one()}/{database}/{schema}"


def placed_identity(conn: Connection, place: str) -> str | None:
    """The ledger's id, for a SQLite file whose inode is ``place``, or a PostgreSQL database
    whose :func:`database_place` it is (a write transaction).

    ``cp`` and ``pg_dump`` copy ``ledger_meta`` with the rest: a copy (another file, another
    database) had the original's id, so an ometer client on the copy took a gateway's answer
    on the original for its own ledger's and wrote no span of the call in the copy. A copy is named anew here,
    once (the first process to read it), and the id noted as the copy's own; a ledger named
    before ids were placed takes the file it is read in now as its own. On PostgreSQL the id's
    row is locked first: processes reading a copy at once (READ COMMITTED) each named it, the
    last one's id kept, and the others held one the ledger did not have. (SQLite's write
    transaction has the file to itself.)"""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK_IDENTITY, {"key": IDENTITY})
    found = get_meta(conn, IDENTITY)
    placed = get_meta(conn, PLACE)
    if found is not None and placed not in (None, place):
        found = secrets.token_hex(16)
        set_meta(conn, IDENTITY, found)
    if found is not None and placed != place:
        set_meta(conn, PLACE, place)
    return found


def ledger_zone(conn: Connection) -> tzinfo | None:
    """The zone whose midnights begin the ledger's day and month cells (None: UTC).

    Set when the ledger is made (``OMETER_TIMEZONE``) or by ``ometer db rollup --zone``,
    so reports in the zone finance works in read whole cells. A LedgerError when this
    host's zone data lacks it (another host, with newer data, set it): nothing can be cut
    into the ledger's days, so a span is spooled rather than lost, and a command says why.
    """
    return zone_named(zone_name(conn))


def zone_named(name: str) -> tzinfo | None:
    """The ledger's zone ``name`` (:func:`ledger_zone`) as a tzinfo (None: UTC)."""
    if name == "UTC":
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        meanwhile = spooled_meanwhile()
        raise LedgerError(
            f"the ledger's days begin at midnight in {name}, a time zone this machine does not "
            "know (a machine with newer zone data set it): update the zone data here "
            f"(pip install -U tzdata, or the system's tzdata package){meanwhile}"
        ) from None


def zone_name(conn: Connection) -> str:
    """The IANA name of the ledger's zone (:func:`ledger_zone`): UTC unless set."""
    return get_meta(conn, "zone") or "UTC"


def pruned_before(conn: Connection) -> int | None:
    """Raw spans that started before this instant (µs) may have been pruned; rollups keep them."""
    return _instant(get_meta(conn, "pruned_before"))


def _instant(value: str | None) -> int | None:
    return None if value is None else int(value)


def write_facts(conn: Connection, revision: str) -> tuple[str | None, int | None, tzinfo | None]:
    """What a write of spans reads of the ledger, in one statement: the schema revision (by
    ``revision``, a query of one value), :func:`pruned_before` and :func:`ledger_zone`.

    On PostgreSQL each read was a round trip of its own, three of a call's fifteen."""
    if conn.dialect.name != "postgresql":
        found = conn.exec_driver_sql(revision).scalar()
        return found, pruned_before(conn), ledger_zone(conn)
    found, horizon, zone = conn.exec_driver_sql(_FACTS.format(revision)).one()
    return found, _instant(horizon), zone_named(zone or "UTC")


_FACTS = "SELECT ({} LIMIT 1), " + ", ".join(
    f"({_SELECT.format(repr(key))})" for key in ("pruned_before", "zone")
)
