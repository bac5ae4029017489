"""PostgreSQL's SQLSTATEs that ometer tells apart, and a session the server ended.

Owns naming a driver's failure by its code only: what a user is told of it is
:meth:`~ollama_meter.ledger._database.Database.explain`'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ollama_meter.errors import LedgerError

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


def once_more_if_ended(work: Callable[[], T]) -> T:
    """``work`` (its ledger transactions), once more if the server ended its session under
    it (a DBA's ``pg_terminate_backend``, a pooler's): the server undid it and answers still,
    and a call whose budget it checked, or whose key it read, was refused as if the database
    were away. Once: a server that ends every session is away, and says so."""
    try:
        return work()
    except LedgerError as exc:
        state = getattr(getattr(exc.__cause__, "orig", None), "sqlstate", None)
        if state not in ENDED:
            raise
    return work()
