"""Writing spans and reading them back. SQL here stays portable (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ollama_meter.budgets import PastCall
from ollama_meter.ledger.models import SpanRow
from ollama_meter.meter.span import SpanRecord

_TABLE: Table = SpanRow.__table__  # type: ignore[assignment]
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


def _idempotent_insert(dialect: str) -> Insert:
    """INSERT that skips ids already present, so recording a span twice keeps one row."""
    if dialect == "sqlite":
        return sqlite.insert(_TABLE).on_conflict_do_nothing(index_elements=["id"])
    if dialect == "postgresql":
        return postgresql.insert(_TABLE).on_conflict_do_nothing(index_elements=["id"])
    return insert(_TABLE)


class _SpanInsert:
    """The idempotent span INSERT compiled once per dialect, with each column's bind processor.

    The write path is every call's, so it skips what SQLAlchemy redoes per execution
    (cache-key, compiled-cache lookup, parameter coercion) and hands the driver its own
    SQL and rows. Values go through the very processors the Core statement would use
    (UTC datetimes, exact decimal text, JSON), so the stored bytes are the same.
    """

    def __init__(self, dialect: Dialect) -> None:
        columns = [c.name for c in _TABLE.c]
        compiled = (
            _idempotent_insert(dialect.name)
            .values({name: bindparam(name) for name in columns})
            .compile(dialect=dialect)
        )
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or columns)
        processors = {
            c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in _TABLE.c
        }
        self.steps = tuple((name, processors[name]) for name in self.names)

    def rows(self, spans: Sequence[SpanRecord]) -> list[Any]:
        out: list[Any] = []
        for span in spans:
            values = [
                process(getattr(span, name)) if process else getattr(span, name)
                for name, process in self.steps
            ]
            out.append(
                tuple(values) if self.positional else dict(zip(self.names, values, strict=True))
            )
        return out


_INSERTS: dict[str, _SpanInsert] = {}


def insert_spans(conn: Connection, spans: Sequence[SpanRecord]) -> None:
    if not spans:
        return
    dialect = conn.dialect
    statement = _INSERTS.get(dialect.name)
    if statement is None:
        statement = _INSERTS[dialect.name] = _SpanInsert(dialect)
    conn.exec_driver_sql(statement.sql, statement.rows(spans))


def row_to_span(row: Any) -> SpanRecord:
    return SpanRecord(
        **{
            name: getattr(row, name)
            for name in SpanRecord.__dataclass_fields__
            if name != "attributes"
        }
    )


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

    def clauses(self) -> list[Any]:
        clauses: list[Any] = []
        if self.since is not None:
            clauses.append(SpanRow.started_at >= self.since)
        if self.until is not None:
            clauses.append(SpanRow.started_at < self.until)
        for column, value in (
            (SpanRow.tenant, self.tenant),
            (SpanRow.department, self.department),
            (SpanRow.status, self.status),
            (SpanRow.user, self.user),
            (SpanRow.error_type, self.error_type),
        ):
            if value is not None:
                clauses.append(column == value)
        if self.model is not None:
            # A span belongs to the model Ollama answered with, or the one asked for.
            clauses.append(
                (SpanRow.response_model == self.model)
                | ((SpanRow.response_model.is_(None)) & (SpanRow.request_model == self.model))
            )
        return clauses


def latest_spans(conn: Connection, where: SpanFilter, limit: int) -> list[SpanRecord]:
    """Newest first. Ids are ULIDs, so the primary key orders by start time."""
    query = select(SpanRow).where(*where.clauses()).order_by(SpanRow.id.desc()).limit(limit)
    return [row_to_span(row) for row in conn.execute(query)]


def page_after(conn: Connection, where: SpanFilter, after: str, limit: int) -> list[SpanRecord]:
    """The next ``limit`` matching spans with ids above ``after``: keyset paging over the ledger."""
    query = (
        select(SpanRow)
        .where(*where.clauses(), SpanRow.id > after)
        .order_by(SpanRow.id)
        .limit(limit)
    )
    return [row_to_span(row) for row in conn.execute(query)]


def update_costs(conn: Connection, spans: Sequence[SpanRecord]) -> None:
    """Write the cost columns of already-recorded spans back."""
    if not spans:
        return
    stmt = (
        update(_TABLE)
        .where(_TABLE.c.id == bindparam("_id"))
        .values({name: bindparam(name) for name in _COST_COLUMNS})
    )
    params = [{"_id": s.id, **{name: getattr(s, name) for name in _COST_COLUMNS}} for s in spans]
    conn.execute(stmt, params)


def recent_usage(conn: Connection, model: str, limit: int) -> list[PastCall]:
    query = (
        select(
            SpanRow.input_tokens,
            SpanRow.output_tokens,
            SpanRow.prompt_eval_duration_ns,
            SpanRow.eval_duration_ns,
            SpanRow.load_duration_ns,
        )
        .where(SpanRow.request_model == model, SpanRow.status == "ok")
        .order_by(SpanRow.id.desc())
        .limit(limit)
    )
    return [
        PastCall(row[0], row[1], row[2] or 0, row[3] or 0, row[4] or 0)
        for row in conn.execute(query)
    ]
