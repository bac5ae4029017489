"""Rollups (sums, histograms, busy time per host) and leaner spans.

Reports, budgets and chargeback read rollups kept as spans arrive, so the
``(tenant, department, started_at)`` index on every span no longer pays; on
SQLite span times become integer microseconds (8 bytes instead of 26 of text,
in the row and in the index). Rollups for the spans already in the ledger are
built from them once, by the first ``ometer`` that opens the ledger after this
migration (``ledger_meta.rollups = 'stale'`` asks for it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITHOUT_ROWID = {"sqlite_with_rowid": False}


def _span_columns(time_type: sa.types.TypeEngine[object]) -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("started_at", time_type, nullable=False),
        sa.Column("ended_at", time_type, nullable=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("user", sa.String(128), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("upstream_host", sa.String(255), nullable=False),
        sa.Column("request_model", sa.String(255), nullable=False),
        sa.Column("response_model", sa.String(255), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("done_reason", sa.String(32), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("token_source", sa.String(16), nullable=False),
        sa.Column("total_duration_ns", sa.BigInteger(), nullable=True),
        sa.Column("load_duration_ns", sa.BigInteger(), nullable=True),
        sa.Column("prompt_eval_duration_ns", sa.BigInteger(), nullable=True),
        sa.Column("eval_duration_ns", sa.BigInteger(), nullable=True),
        sa.Column("duration_source", sa.String(16), nullable=True),
        sa.Column("latency_ns", sa.BigInteger(), nullable=True),
        sa.Column("ttft_ns", sa.BigInteger(), nullable=True),
        sa.Column("cost_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_compute", sa.BigInteger(), nullable=False),
        sa.Column("cost_energy", sa.BigInteger(), nullable=False),
        sa.Column("cost_fee", sa.BigInteger(), nullable=False),
        sa.Column("cost_total", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("price_rule_id", sa.Integer(), nullable=True),
        sa.Column("unpriced", sa.Boolean(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
    ]


def _sqlite_micros(column: str) -> str:
    """SQLAlchemy's SQLite text time ``YYYY-MM-DD HH:MM:SS[.ffffff]`` as exact microseconds."""
    return (
        f"CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000000"
        f" + CAST(substr(rtrim(substr({column}, 21, 6)) || '000000', 1, 6) AS INTEGER)"
    )


def _sqlite_text(column: str) -> str:
    """Microseconds back to SQLAlchemy's SQLite text time."""
    return (
        f"strftime('%Y-%m-%d %H:%M:%S', {column} / 1000000, 'unixepoch')"
        f" || '.' || printf('%06d', {column} % 1000000)"
    )


def _rebuild_spans_on_sqlite(time_type: sa.types.TypeEngine[object], convert: object) -> None:
    """Copy spans into a table whose times have ``time_type``, converted by ``convert(column)``.

    A new table and one copy: batch mode would CAST the times as numbers.
    """
    assert callable(convert)
    op.create_table(
        "spans_copy", *_span_columns(time_type), sa.PrimaryKeyConstraint("id", name="pk_spans")
    )
    names = [c.name for c in _span_columns(time_type)]
    selected = [
        f"CASE WHEN {n} IS NULL THEN NULL ELSE {convert(n)} END"
        if n in ("started_at", "ended_at")
        else f'"{n}"'
        for n in names
    ]
    columns = ", ".join(f'"{n}"' for n in names)
    op.execute(f"INSERT INTO spans_copy ({columns}) SELECT {', '.join(selected)} FROM spans")
    op.drop_table("spans")  # its indexes go with it
    op.rename_table("spans_copy", "spans")
    op.create_index("ix_spans_started_at", "spans", ["started_at"])


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_spans_on_sqlite(sa.BigInteger(), _sqlite_micros)
    else:
        op.drop_index("ix_spans_tenant_department_started_at", table_name="spans")
    op.create_table(
        "rollups",
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(32), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "requests",
                "input_tokens",
                "output_tokens",
                "busy_ns",
                "load_ns",
                "cost_tokens",
                "cost_compute",
                "cost_energy",
                "cost_fee",
                "cost_total",
                "unpriced",
                "unpriced_tokens",
                "cold_loads",
                "cold_load_ns",
            )
        ),
        sa.PrimaryKeyConstraint(
            "grain",
            "start",
            "tenant",
            "department",
            "user",
            "model",
            "currency",
            "status",
            "error_type",
            name="pk_rollups",
        ),
        **_WITHOUT_ROWID,
    )
    op.create_table(
        "rollup_histograms",
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("metric", sa.SmallInteger(), nullable=False),
        sa.Column("decade", sa.SmallInteger(), nullable=False),
        *(sa.Column(f"b{index:02d}", sa.BigInteger(), nullable=False) for index in range(75)),
        sa.PrimaryKeyConstraint(
            "grain",
            "start",
            "tenant",
            "department",
            "model",
            "metric",
            "decade",
            name="pk_rollup_histograms",
        ),
        **_WITHOUT_ROWID,
    )
    op.create_table(
        "rollup_busy",
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("intervals", sa.Text(), nullable=False),
        sa.Column("busy_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("start", "host", name="pk_rollup_busy"),
        **_WITHOUT_ROWID,
    )
    meta = op.create_table(
        "ledger_meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_ledger_meta"),
    )
    op.bulk_insert(meta, [{"key": "rollups", "value": "stale"}])


def downgrade() -> None:
    for table in ("ledger_meta", "rollup_busy", "rollup_histograms", "rollups"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_spans_on_sqlite(sa.DateTime(), _sqlite_text)
    op.create_index(
        "ix_spans_tenant_department_started_at", "spans", ["tenant", "department", "started_at"]
    )
