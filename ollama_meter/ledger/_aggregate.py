"""Spend aggregation in SQL: GROUP BY attribution columns and local-time buckets.

Time buckets are a CASE over precomputed UTC boundaries rather than a date
function, which keeps the SQL identical on SQLite and PostgreSQL and honours
the configured zone (DST included) exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, case, func, literal, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from ollama_meter.ledger._spans import SpanFilter
from ollama_meter.ledger.models import SpanRow

GROUP_COLUMNS: dict[str, ColumnElement[Any]] = {
    "tenant": SpanRow.__table__.c.tenant,
    "department": SpanRow.__table__.c.department,
    "user": func.coalesce(SpanRow.user, ""),
    "model": func.coalesce(SpanRow.response_model, SpanRow.request_model),
}


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One group's sums. ``bucket`` indexes the time buckets given, or is 0 without them."""

    keys: tuple[str, ...]
    bucket: int
    currency: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    gpu_ns: int
    cost: int
    unpriced_requests: int


def aggregate_spend(
    conn: Connection,
    where: SpanFilter,
    by: Sequence[str],
    bucket_starts: Sequence[datetime] = (),
) -> list[SpendRow]:
    """Sums per (``by`` columns, time bucket, currency)."""
    keys = [GROUP_COLUMNS[name].label(f"k_{name}") for name in by]
    if bucket_starts:
        # Spans are filtered to the window, so every span falls in one bucket;
        # the boundaries are searched from the newest down.
        whens = [
            (SpanRow.started_at >= start, literal(index))
            for index, start in reversed(list(enumerate(bucket_starts)))
        ]
        bucket: ColumnElement[Any] = case(*whens, else_=literal(0)).label("bucket")
    else:
        bucket = literal(0).label("bucket")
    zero = literal(0)
    query = (
        select(
            *keys,
            bucket,
            SpanRow.currency,
            func.count().label("requests"),
            func.sum(case((SpanRow.status == "error", 1), else_=zero)).label("errors"),
            func.sum(SpanRow.input_tokens).label("input_tokens"),
            func.sum(SpanRow.output_tokens).label("output_tokens"),
            func.sum(
                func.coalesce(SpanRow.prompt_eval_duration_ns, zero)
                + func.coalesce(SpanRow.eval_duration_ns, zero)
            ).label("gpu_ns"),
            func.sum(SpanRow.cost_total).label("cost"),
            func.sum(
                # Unpriced usage, not unpriced failures: a call that consumed nothing costs nothing.
                case(
                    (
                        (SpanRow.unpriced == True)  # noqa: E712
                        & (
                            (SpanRow.status == "ok")
                            | (SpanRow.input_tokens + SpanRow.output_tokens > 0)
                        ),
                        1,
                    ),
                    else_=zero,
                )
            ).label("unpriced"),
        )
        .where(*where.clauses())
        # By output name: PostgreSQL cannot match bound parameters in SELECT and GROUP BY.
        .group_by(
            *(literal_column(k.name) for k in keys), literal_column("bucket"), SpanRow.currency
        )
    )
    return [
        SpendRow(
            keys=tuple(str(row[i]) for i in range(len(keys))),
            bucket=int(row.bucket),
            currency=row.currency,
            requests=int(row.requests),
            errors=int(row.errors or 0),
            input_tokens=int(row.input_tokens or 0),
            output_tokens=int(row.output_tokens or 0),
            gpu_ns=int(row.gpu_ns or 0),
            cost=int(row.cost or 0),
            unpriced_requests=int(row.unpriced or 0),
        )
        for row in conn.execute(query)
    ]


def timing_rows(where: SpanFilter, by: Sequence[str]) -> Select[Any]:
    """One row per span: its group keys and the timing columns ``ometer perf`` needs."""
    keys = [GROUP_COLUMNS[name].label(f"k_{name}") for name in by]
    return select(
        *keys,
        SpanRow.status,
        SpanRow.latency_ns,
        SpanRow.ttft_ns,
        SpanRow.output_tokens,
        SpanRow.total_duration_ns,
        SpanRow.load_duration_ns,
        SpanRow.prompt_eval_duration_ns,
        SpanRow.eval_duration_ns,
        SpanRow.duration_source,
        SpanRow.started_at,
    ).where(*where.clauses())


@dataclass(frozen=True, slots=True)
class FailureCount:
    """How many calls ended with one (status, error type), e.g. ``("error", "timeout")``."""

    status: str
    error_type: str | None
    requests: int


def aggregate_failures(conn: Connection, where: SpanFilter) -> list[FailureCount]:
    """Calls that did not end ``ok``, counted per (status, error type)."""
    query = (
        select(SpanRow.status, SpanRow.error_type, func.count().label("requests"))
        .where(*where.clauses(), SpanRow.status != "ok")
        .group_by(SpanRow.status, SpanRow.error_type)
    )
    return [
        FailureCount(status=row.status, error_type=row.error_type, requests=int(row.requests))
        for row in conn.execute(query)
    ]
