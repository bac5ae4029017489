"""Writing spans and reading them back. SQL here stays portable (SQLite and PostgreSQL)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Select, Table, bindparam, null, select, update

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import _history, _meta, _prices, _rollup
from ollama_meter.ledger._budgets import budgets_version
from ollama_meter.ledger._span_rows import read_as_stored, row_to_span
from ollama_meter.ledger._spellings import ANSWERED_MODEL, latest_ids, spellings
from ollama_meter.ledger._types import driver_key, from_us, to_us
from ollama_meter.ledger._upserts import run
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import (
    ROW_FIELDS,
    TEXT_LIMITS,
    Cost,
    PriceRule,
    SpanRecord,
    UnreadableRule,
    counted_model,
    storable_text,
)

Rules = tuple[list[PriceRule], list[UnreadableRule], str | None]
"""The ledger's price rules, those it cannot read, and its zone's name, as a write reads them."""
Pricer = Callable[[tuple[object, ...], Callable[[], Rules]], Callable[[SpanRecord], Cost]]
"""Given the rules' version and a read of them, what a span costs under them (the meter's)."""

_TABLE: Table = SPANS
_COST_COLUMNS = (
    "cost_tokens",
    "cost_compute",
    "cost_energy",
    "cost_fee",
    "cost_total",
    "currency",
    "price_rule_id",
    "unpriced",
)


_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
"""How a driver marks a positional parameter, by its DB-API ``paramstyle``."""


class _SpanInsert:
    """The idempotent span INSERT for a dialect, saying which spans it really added.

    ``INSERT ... VALUES (...), (...) ON CONFLICT (id) DO NOTHING RETURNING id``:
    one statement per chunk of rows, and only the ids it returns count in the
    rollups, so recording a span twice (a retry, a spool drained twice, an import
    run again) adds it once, also when two processes race on PostgreSQL.

    The write path is every call's, so the SQL is written once per dialect and
    chunk size and rows go to the driver as they are, through the very bind
    processors SQLAlchemy would use (UTC times, exact decimals, JSON): the stored
    bytes are the same as a Core insert's.
    """

    CHUNK = 500
    """Rows per statement: 41 columns each stays under SQLite's 32,766 parameters."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        quote = dialect.identifier_preparer.quote
        self.columns = tuple(c.name for c in _TABLE.c)
        self.head = f"INSERT INTO {quote(_TABLE.name)} ({', '.join(quote(n) for n in self.columns)}) VALUES "
        mark = _MARKS.get(dialect.paramstyle)
        if mark is None:
            raise LedgerError(
                f"the {dialect.name} driver {dialect.driver!r} takes {dialect.paramstyle} "
                "parameters; the ledger writes through drivers that take qmark (sqlite3) or "
                "format (psycopg) parameters"
            )
        self.mark = mark
        self.row = "(" + ", ".join([self.mark] * len(self.columns)) + ")"
        # psycopg rewrites %s to $n by parsing each statement, and caches the result only
        # for short ones: a 500-row insert (20,500 parameters) was parsed anew every time,
        # most of an import's client CPU on PostgreSQL. Numbered, it is sent as written.
        self.numbered = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self.returning = dialect.name in ("sqlite", "postgresql")
        self.tail = " ON CONFLICT (id) DO NOTHING RETURNING id" if self.returning else ""
        processors: dict[str, Callable[[Any], Any] | None] = {
            c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in _TABLE.c
        }
        self.fetch = operator.attrgetter(*self.columns)
        # Most spans carry no tags: skip the JSON encoder for the answer it always gives.
        encode = processors["tags"]
        if encode is not None:
            processors["tags"] = _skip_empty(encode)
        self.steps: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (index, process)
            for index, name in enumerate(self.columns)
            if (process := processors[name]) is not None
        )
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        text = self._sql.get(rows)
        if text is None:
            if self.numbered:
                width = len(self.columns)
                body = ", ".join(
                    "(" + ", ".join(f"${at + 1}" for at in range(row, row + width)) + ")"
                    for row in range(0, rows * width, width)
                )
            else:
                body = ", ".join([self.row] * rows)
            text = self._sql[rows] = self.head + body + self.tail
        return text

    def run(self, conn: Connection, spans: Sequence[SpanRecord]) -> list[Any]:
        """Insert one chunk; the ids of the rows added (with RETURNING), else none."""
        sql, values = self.sql(len(spans)), tuple(self.values(spans))
        if conn.dialect.name == "sqlite":
            return [row[0] for row in run(conn, sql, values)]
        if not self.numbered:
            result = conn.exec_driver_sql(sql, values)
        else:  # through SQLAlchemy still (its errors, its disconnect handling), raw cursor
            from psycopg import RawCursor

            driver: Any = conn.connection.driver_connection
            plain, driver.cursor_factory = driver.cursor_factory, RawCursor
            try:
                result = conn.exec_driver_sql(sql, values)
            finally:
                driver.cursor_factory = plain
        return list(result.scalars()) if self.returning else []

    def values(self, spans: Sequence[SpanRecord]) -> list[Any]:
        out: list[Any] = []
        fetch, steps = self.fetch, self.steps
        for span in spans:
            row = list(fetch(span))
            for index, process in steps:
                row[index] = process(row[index])
            out += row
        return out

    def insert(self, conn: Connection, spans: Sequence[SpanRecord]) -> list[SpanRecord]:
        """Insert ``spans`` (distinct ids); the ones that were not there yet."""
        if not self.returning:
            known = set(
                conn.execute(
                    select(SPANS.c.id).where(SPANS.c.id.in_([s.id for s in spans]))
                ).scalars()
            )
            fresh = [s for s in spans if s.id not in known]
            for start in range(0, len(fresh), self.CHUNK):
                self.run(conn, fresh[start : start + self.CHUNK])
            return fresh
        added: list[SpanRecord] = []
        for start in range(0, len(spans), self.CHUNK):
            chunk = spans[start : start + self.CHUNK]
            ids = set(self.run(conn, chunk))
            added.extend(span for span in chunk if span.id in ids)
        return added


def _skip_empty(encode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    empty = encode({})
    return lambda value: encode(value) if value else empty


_INSERTS: dict[tuple[str, str, str], _SpanInsert] = {}
_BY_ID = operator.attrgetter("id")


@dataclass(frozen=True, slots=True)
class Inserted:
    """What :func:`insert_spans` did with the spans it was given."""

    added: list[SpanRecord]
    """The spans that were new: recorded, and counted in the rollups."""
    early: list[SpanRecord] = field(default_factory=list)
    """Spans that started before the prune horizon and that the ledger does not hold: not
    recorded (see :func:`insert_spans`)."""
    horizon: datetime | None = None
    """The prune horizon the spans were held to (None: the ledger was never pruned)."""
    budgets: str | None = None
    """``budgets_version`` as this transaction saw it (when asked, ``budgets``): a server's
    look for budgets changed elsewhere, with no read (nor wait for a database gone) after
    the commit."""


def insert_spans(
    conn: Connection,
    spans: Sequence[SpanRecord],
    *,
    pruned_too: bool = False,
    budgets: bool = False,
    price: Pricer | None = None,
) -> Inserted:
    """Record ``spans`` and add the new ones to the rollups, in the caller's transaction.

    Spans go in id order (ULIDs: start time), so concurrent writers on PostgreSQL
    lock ids in one order; an id given twice is recorded once.

    Every path that records spans comes here (a call's write, the spool's drain, a dead
    process's journal, ``ometer db import``), so one rule holds for all at the prune
    horizon: a span that started before it and that the ledger does not hold is not
    recorded, unless ``pruned_too``. Its day keeps only rollups, and the ledger cannot
    tell a span it counted there and pruned since (a spool file or journal replayed after
    its commit, an export imported back) from one it never had (spooled across the prune,
    another ledger's): the first, added again, is counted twice. The caller keeps those
    (:attr:`Inserted.early`) or says it skipped them. The horizon is read under the
    rollups' lock, which a prune holds alone to record it: a prune landing meanwhile
    waits for this transaction, and removes the spans it adds. ``budgets``: read
    ``budgets_version`` too (:attr:`Inserted.budgets`).

    ``price`` (a meter's writes): each span is recorded priced by the rules in force as it
    is committed, read under the lock a reprice writes each page under. Priced when it
    ended, by the rules its call opened with, a call that ended as the rules changed was
    written after a reprice had passed it, at the old price for good.
    """
    if not spans:
        return Inserted([])
    dialect = conn.dialect
    key = driver_key(dialect)
    statement = _INSERTS.get(key)
    if statement is None:
        statement = _INSERTS[key] = _SpanInsert(dialect)
    unique = sorted({span.id: span for span in reversed(spans)}.values(), key=_BY_ID)
    horizon, zone = _rollup.lock_for_spans(conn)
    if price is not None:
        unique = _priced(conn, unique, price)
    if pruned_too:
        horizon = None
    early: list[SpanRecord] = []
    if horizon is not None:
        unique, early = _before(conn, unique, horizon)
    added = statement.insert(conn, unique)
    _rollup.apply(conn, added, zone)
    _history.note_calls(conn, added)
    seen = budgets_version(conn) if budgets else None
    return Inserted(added, early, None if horizon is None else from_us(horizon), seen)


def _priced(conn: Connection, spans: list[SpanRecord], price: Pricer) -> list[SpanRecord]:
    """``spans`` priced by the rules as this transaction reads them: a copy of each that moves
    (the caller's own span, maybe still read by its thread, is not changed under it)."""

    def rules() -> Rules:
        return (*_prices.readable_rules(conn), _meta.get_meta(conn, "zone"))

    cost_of = price(_prices.write_version(conn), rules)
    priced = []
    for span in spans:
        cost = cost_of(span)
        fresh = span if _costs(span) == _costs_of(cost) else replace(span)
        fresh.apply_cost(cost)
        priced.append(fresh)
    return priced


def _before(
    conn: Connection, spans: list[SpanRecord], horizon: int
) -> tuple[list[SpanRecord], list[SpanRecord]]:
    """``spans`` split at the horizon: those to insert, and those before it that the ledger
    does not hold (a span a prune kept, busy past the horizon, is there: a no-op, as ever)."""
    later = [span for span in spans if to_us(span.started_at) >= horizon]
    if len(later) == len(spans):
        return spans, []
    before = [span for span in spans if to_us(span.started_at) < horizon]
    held: set[str] = set()
    for start in range(0, len(before), _SpanInsert.CHUNK):
        ids = [span.id for span in before[start : start + _SpanInsert.CHUNK]]
        held.update(conn.scalars(select(SPANS.c.id).where(SPANS.c.id.in_(ids))))
    return later, [span for span in before if span.id not in held]


_COLUMNS = read_as_stored(tuple(SPANS.c[name] for name in ROW_FIELDS))


_CONTENT = frozenset({"prompt", "reply"})
_WITHOUT_CONTENT = tuple(
    null().label(column.key) if column.key in _CONTENT else column for column in _COLUMNS
)


def select_spans(*, content: bool = True) -> Select[Any]:
    """A query for whole spans, columns in :class:`SpanRecord`'s field order.

    ``content=False`` leaves prompt and reply out (None): sums over many spans need
    neither, and PostgreSQL's driver holds a whole result in memory (a day of captured
    calls of a million characters each would be gigabytes).
    """
    return select(*(_COLUMNS if content else _WITHOUT_CONTENT))


_TEXT_FILTERS = {
    "tenant": "tenant",
    "department": "department",
    "model": "request_model",
    "status": "status",
    "user": "user",
    "error_type": "error_type",
}
"""A filter's text fields, and the span column whose length bounds each."""


@dataclass(frozen=True, slots=True)
class SpanFilter:
    """Which spans a query looks at; None means any."""

    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None
    department: str | None = None
    model: str | None = None
    status: str | None = None
    user: str | None = None
    error_type: str | None = None

    def __post_init__(self) -> None:
        # A filter names a value as the meter stored it (``make_storable``): a NUL or a lone
        # surrogate, which PostgreSQL refuses outright, reads as the U+FFFD it was stored as.
        for name, column in _TEXT_FILTERS.items():
            value = getattr(self, name)
            if value is not None and name != "model":
                object.__setattr__(self, name, storable_text(str(value), TEXT_LIMITS[column]))
        if self.model is not None:  # any spelling of a model picks all of its calls, as
            # the meter stores them (folded whole, not cut first: ``make_storable``)
            object.__setattr__(self, "model", counted_model(str(self.model)))

    def clauses(self, conn: Connection) -> list[Any]:
        """The WHERE clauses of spans this picks; ``conn`` finds the spellings of its model."""
        clauses: list[Any] = []
        if self.since is not None:
            clauses.append(SPANS.c.started_at >= self.since)
        if self.until is not None:
            clauses.append(SPANS.c.started_at < self.until)
        for column, value in (
            (SPANS.c.tenant, self.tenant),
            (SPANS.c.department, self.department),
            (SPANS.c.status, self.status),
            (SPANS.c.user, self.user),
            (SPANS.c.error_type, self.error_type),
        ):
            if value is not None:
                clauses.append(column == value)
        if self.model is not None:
            others = replace(self, model=None).clauses(conn)
            clauses.append(ANSWERED_MODEL.in_(spellings(conn, self.model, others)))
        return clauses


def latest_spans(conn: Connection, where: SpanFilter, limit: int) -> list[SpanRecord]:
    """Newest first. Ids are ULIDs, so the primary key orders by start time."""
    if where.model is None:
        query = select_spans().where(*where.clauses(conn)).order_by(SPANS.c.id.desc())
        return [row_to_span(row) for row in conn.execute(query.limit(limit))]
    others = replace(where, model=None).clauses(conn)
    ids = latest_ids(conn, where.model, others, limit)
    found: list[SpanRecord] = []
    for at in range(0, len(ids), 1_000):
        query = select_spans().where(SPANS.c.id.in_(ids[at : at + 1_000]))
        found += map(row_to_span, conn.execute(query))
    return sorted(found, key=lambda span: span.id, reverse=True)


def page_after(conn: Connection, where: SpanFilter, after: str, limit: int) -> list[SpanRecord]:
    """The next ``limit`` matching spans with ids above ``after``: keyset paging over the ledger.

    Without their prompts and replies (a page of 2,000 captured calls of a million characters
    each held gigabytes): what pages them (a reprice) works from counts and durations."""
    query = (
        select_spans(content=False)
        .where(*where.clauses(conn), SPANS.c.id > after)
        .order_by(SPANS.c.id)
        .limit(limit)
    )
    return [row_to_span(row) for row in conn.execute(query)]


class RulesChanged(Exception):
    """The price rules are not those the costs were worked out under: work them out again."""


def update_costs(
    conn: Connection, spans: Sequence[SpanRecord], rules: Sequence[PriceRule] | None = None
) -> list[SpanRecord]:
    """Write the cost columns of already-recorded spans back, and move the rollups with them.

    Returns the spans that moved, as they were stored until now (read in this transaction):
    a span whose stored costs are already these (another ``reprice`` wrote them since the
    caller read it) or that is gone (pruned) is not written and not returned, so a caller
    counts only what it moved. With ``rules`` (those the costs were worked out under),
    raises :class:`RulesChanged`, writing nothing, unless they are the ledger's rules now:
    a reprice begun before a rule changed undid, page by page, what a reprice run after
    the change had written.
    """
    if not spans:
        return []
    ids = [s.id for s in spans]
    _rollup.lock_cells(conn)
    if rules is not None and tuple(_prices.list_rules(conn)) != tuple(rules):
        raise RulesChanged
    query = select_spans(content=False).where(SPANS.c.id.in_(ids)).order_by(SPANS.c.id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    stored = {span.id: span for span in map(row_to_span, conn.execute(query))}
    moved = [
        (stored[new.id], new)
        for new in spans
        if new.id in stored and _costs(stored[new.id]) != _costs(new)
    ]
    if not moved:
        return []
    stmt = (
        update(_TABLE)
        .where(_TABLE.c.id == bindparam("_id"))
        .values({name: bindparam(name) for name in _COST_COLUMNS})
    )
    conn.execute(stmt, [{"_id": new.id, **_costs(new)} for _, new in moved])
    delta = _rollup.RollupDelta()
    for old, new in moved:
        delta.add(old, -1, busy=False)
        delta.add(new, busy=False)
    delta.write(conn, _meta.ledger_zone(conn))
    return [old for old, _ in moved]


def _costs(span: SpanRecord) -> dict[str, Any]:
    return {name: getattr(span, name) for name in _COST_COLUMNS}


def _costs_of(cost: Cost) -> dict[str, Any]:
    """``cost`` as :func:`_costs` reads a span's."""
    parts = (cost.tokens, cost.compute, cost.energy, cost.fee, cost.total, cost.currency)
    return dict(zip(_COST_COLUMNS, (*parts, cost.rule_id, cost.unpriced), strict=True))
