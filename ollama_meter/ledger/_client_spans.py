"""Which calls a dead ometer client left open a gateway on this ledger recorded itself.

A client sends its own span id of each call to a gateway (``X-Ometer-Client-Span``); the
gateway notes it on its span (``CLIENT_SPAN_TAG``). A client killed before any answer left
its call open in its journal; where the gateway's span of that call is in the ledger, it is
the call's one record, and recovery writes no interrupted copy beside it. A gateway in front
of another is such a client too (``gateway/_onward.py``): killed, its open calls were recorded
again beside the inner gateway's spans of them.

The note is the caller's word: anyone may name any id. So a gateway span only stands for a
journal entry charged alike (tenant, department, requested model) and begun near it; where
they differ (a key that charges otherwise, a clock hours off) the copy is written, the call
counted twice, never not at all.

The gateway's span may come late: its commit waits behind another writer's lock (a rollup
rebuild, an import, a reprice) as long as the lock is held. So a look for it (a client that
gave up on its call, recovery) goes on while writes wait (:func:`looked_for`): looked for a
second of the clock, a span committed behind a 1.5 s lock was missed, and the call counted twice.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import Connection, Engine, select, text

from ollama_meter._names import CLIENT_SPAN_TAG, origin_of
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import Source, SpanRecord

T = TypeVar("T")

NEAR = timedelta(hours=1)
"""How far apart a client's and its gateway's clocks may put the call's start."""


def recorded_by_gateway(conn: Connection, opened: Sequence[SpanRecord]) -> set[str]:
    """The ids of the ``opened`` client spans a gateway span in the ledger names, charged alike."""
    return {span.id for span in opened if gateway_span_of(conn, span) is not None}


def gateway_span_of(conn: Connection, span: SpanRecord) -> str | None:
    """The id of a gateway span in the ledger that notes ``span``'s call (by the id it goes by
    along a chain: ``origin_of``), charged alike and begun near it; None if there is none."""
    noted = SPANS.c.tags[CLIENT_SPAN_TAG].as_string()
    query = (
        select(SPANS.c.id)
        .where(
            SPANS.c.started_at.between(span.started_at - NEAR, span.started_at + NEAR),
            SPANS.c.source == Source.GATEWAY,
            noted == origin_of(span.id, span.tags),
            SPANS.c.id != span.id,
            SPANS.c.tenant == span.tenant,
            SPANS.c.department == span.department,
            SPANS.c.request_model == span.request_model,
        )
        .limit(1)
    )
    return conn.execute(query).scalar()


_LOCK_WAITERS = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE NOT l.granted AND a.datid = (SELECT oid FROM pg_database"
    " WHERE datname = current_database()))"
)
"""Any session of the ledger's database waiting for a lock (a row's lock names no database:
the session's does; any role sees every session's database and every lock)."""


def writes_wait(engine: Engine) -> bool:
    """Whether a write to the ledger would wait now for a lock another holds (a gateway's span
    of a call may be waiting behind it): SQLite's write lock taken, or any lock waited for on
    PostgreSQL. Looked at, never waited for; False when it cannot be told."""
    try:
        with engine.connect() as conn:
            if conn.dialect.name != "sqlite":
                return bool(conn.execute(_LOCK_WAITERS).scalar())
            raw = conn.connection.driver_connection
            assert raw is not None
            wait = raw.execute("PRAGMA busy_timeout").fetchone()[0]
            raw.execute("PRAGMA busy_timeout = 0")
            try:
                raw.execute("BEGIN IMMEDIATE")
                raw.execute("ROLLBACK")
            except sqlite3.OperationalError:  # "database is locked": another writer has it
                return True
            finally:
                raw.execute(f"PRAGMA busy_timeout = {int(wait)}")  # a pooled connection
            return False
    except Exception:
        return False


LOOK_PAUSE_S = 0.02
"""Seconds between two looks."""


def looked_for(
    engine: Engine,
    look: Callable[[], T],
    free_s: float,
    locked_s: float,
    done: Callable[[T], bool] = bool,
) -> T:
    """``look()`` again and again until what it finds is ``done`` or it has looked for
    ``free_s`` seconds while the ledger takes writes, and ``locked_s`` more at most while they
    wait for a lock (:func:`writes_wait`): a gateway's span committed late behind another
    writer's lock is found. What it found last."""
    began = last = time.monotonic()
    free = 0.0
    while True:
        found = look()
        now = time.monotonic()
        if done(found):
            return found
        if not writes_wait(engine):
            free += now - last
        last = now
        if free >= free_s or now - began >= free_s + locked_s:
            return found
        time.sleep(LOOK_PAUSE_S)
