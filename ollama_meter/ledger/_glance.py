"""How long a span write waits for a lock another process holds: the whole wait, or a glance.

A caller waits for a locked ledger once, ``OMETER_LEDGER_WAIT``, and then its span goes to
the spool. Two paths made it wait twice:

- spans queued (group commit) behind a write that was waiting out the lock, then waited it
  out again for their own: under a rollup rebuild's lock, a gateway call past the
  write-behind backlog answered after twice the wait (9 s where 5 were said);
- ``ometer chat`` (any process) recording the spool as it opened the ledger, then its span.

So once a span write's wait for a lock has run out, the span writes of the next
``OMETER_LEDGER_WAIT`` only glance at the lock (:data:`GLANCE_S`): still held, their spans go
to the spool at once, as when a server has just let a wait run out (``_deadline``); a glance
still refused renews that spell. And the spool recorded as a process opens the ledger only
glances: while another process holds the lock, a later write records it.

A glance is a lock wait cut short in the write's own transaction: PostgreSQL's
``lock_timeout`` for that transaction, SQLite's busy timeout while its ``BEGIN IMMEDIATE``
asks. Owns no query of the ledger's tables; the other writes (budgets, upkeep, making the
schema current) wait the whole wait as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import sqlite3
import time
from collections.abc import Iterator

from sqlalchemy import Connection

GLANCE_S = 0.05
"""Seconds a glancing write waits for a lock: enough for other writers' short transactions
(a commit holds the rows of its minute for milliseconds), not for a rebuild's or a backup's."""

_glancing: contextvars.ContextVar[str] = contextvars.ContextVar("ometer_glancing", default="")

WAITED = "a write waited OMETER_LEDGER_WAIT for it a moment ago; later writes record the spool"
OPENING = "the spool is recorded as the ledger opens only when it is free; a later write does"


@contextlib.contextmanager
def glancing(why: str) -> Iterator[None]:
    """Ledger writes in this block (this thread's) only glance at a lock another holds;
    ``why`` (:data:`WAITED`, :data:`OPENING`) is what their failure says of it."""
    token = _glancing.set(why)
    try:
        yield
    finally:
        _glancing.reset(token)


def glances() -> str:
    """Why writes here only glance at a lock; empty when they wait the whole wait."""
    return _glancing.get()


class Spell:
    """When a ledger's span writes may wait for a lock again: once the last wait for one that
    ran out (or a glance refused in the spell after it) is ``wait`` seconds old."""

    def __init__(self, wait: float) -> None:
        self._wait = wait
        self._until = 0.0

    def on(self) -> bool:
        return time.monotonic() < self._until

    def cast(self) -> contextlib.AbstractContextManager[None]:
        """The block a span write runs in: it glances at locks while the spell is on."""
        return glancing(WAITED) if self.on() else contextlib.nullcontext()

    def failed(self, locked: bool) -> None:
        """A span write failed, ``locked``: for a lock it waited for (or glanced at, in the
        spell) that another held, or for the pool's connections all busy as long."""
        if locked and glances() != OPENING:  # a glance as the ledger opened waited for none
            self._until = time.monotonic() + self._wait


@contextlib.contextmanager
def sqlite_glance(conn: Connection) -> Iterator[None]:
    """A glancing write's SQLite connection waits :data:`GLANCE_S` for the write lock (set
    before its ``BEGIN IMMEDIATE``, the busy timeout is per connection: put back after)."""
    if not glances():
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    before = raw.execute("PRAGMA busy_timeout").fetchone()[0]
    raw.execute(f"PRAGMA busy_timeout = {int(GLANCE_S * 1000)}")
    try:
        yield
    finally:
        try:
            raw.execute(f"PRAGMA busy_timeout = {int(before)}")
        except sqlite3.Error:  # never lent again with a glance for a wait
            conn.invalidate()


def postgresql_glance(conn: Connection) -> None:
    """A glancing write's PostgreSQL transaction (begun) waits :data:`GLANCE_S` for a lock."""
    if glances():
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(GLANCE_S * 1000)}")
