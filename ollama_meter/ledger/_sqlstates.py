"""PostgreSQL's SQLSTATEs that ometer tells apart, and a session the server ended.

Owns naming a driver's failure by its code (or, for a session lost with none, by the
driver's connection gone): what a user is told of it is
:meth:`~ollama_meter.ledger._database.Database.explain`'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._deadline import cut_short

T = TypeVar("T")

LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's SQLSTATE for a lock not had within ``lock_timeout`` (OMETER_LEDGER_WAIT)."""


ENDED = frozenset({"57P01", "57P02"})
"""PostgreSQL's SQLSTATEs for a session the server ended: an administrator's command
(``pg_terminate_backend``, a fast shutdown or restart), another backend's crash."""

IDLED = "25P03"  # PostgreSQL's SQLSTATE for idle_in_transaction_session_timeout

NOT_ALLOWED = "42501"
"""PostgreSQL's SQLSTATE for a privilege the user lacks (CREATE on the schema, a table)."""

NO_SCHEMA = "3F000"  # PostgreSQL's SQLSTATE for no schema to make a table in (search path)

SCHEMA_CHANGED = frozenset({"42P01", "42703", "42704", "42P07", "42701", "42710"})
"""PostgreSQL's SQLSTATEs for a table, column or index missing, or there already: the tables
are not what the ledger's revision says only when they, or the revision, were changed by
hand (a write at the head, or a migration from the revision recorded)."""

SQLITE_SCHEMA_CHANGED = (
    "no such table",
    "no such column",
    "has no column",
    "no such index",
    "duplicate column",
    "already exists",
)


def session_ended(exc: BaseException | None) -> bool:
    """Whether ``exc`` (a driver's failure, or a LedgerError made of one) is the server
    ending the session it ran on: SQLSTATE 57P01/57P02, or the session lost under the work
    with no SQLSTATE at all. PgBouncer in transaction pooling, its server session ended while
    ometer's sat in a transaction, answers the next statement (a COMMIT) twice, its own
    error after the server's: psycopg says "received 2 results from command 'COMMIT'". A
    connection that could not be opened is not one (nothing was ended: the server is away),
    nor one ometer cut itself, its server silent past the deadline (``_deadline``)."""
    if isinstance(exc, LedgerError):
        exc = exc.__cause__
    if not isinstance(exc, DBAPIError):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    lost = state is None and exc.connection_invalidated and not cut_short(exc.orig)
    return state in ENDED or lost


def once_more_if_ended(work: Callable[[], T]) -> T:
    """``work`` (its ledger transactions), once more if the server ended its session under
    it (a DBA's ``pg_terminate_backend``, a pooler's): the server undid it and answers still,
    and a call whose budget it checked, or whose key it read, was refused as if the database
    were away. Once: a server that ends every session is away, and says so."""
    try:
        return work()
    except LedgerError as exc:
        if not session_ended(exc):
            raise
    return work()
