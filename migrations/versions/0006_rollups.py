"""Rollups (sums, histograms, busy time per host) and leaner spans.

Reports, budgets and chargeback read rollups kept as spans arrive, so the
``(tenant, department, started_at)`` index on every span no longer pays; on
SQLite span times become integer microseconds (8 bytes instead of 26 of text,
in the row and in the index). Rollups for the spans already in the ledger are
built from them once, by the first ``ometer`` that opens the ledger after this
migration (``ledger_meta.rollups = 'stale'`` asks for it).

A time another tool wrote into a SQLite ledger (ISO 8601 with a ``T``, a ``Z``, an offset,
a short fraction) is carried over as the instant it names; one that names none stops the
migration with the spans to mend, before anything changes. (Fixed after release: ledgers
it migrated before had such times read as ometer's own text, an offset as microseconds.)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence
from datetime import UTC, datetime

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


_DIGITS = "[0-9][0-9]"
_WRITTEN = f"{_DIGITS}{_DIGITS}-{_DIGITS}-{_DIGITS} {_DIGITS}:{_DIGITS}:{_DIGITS}"
_WRITTEN_FRACTION = f"{_WRITTEN}.{_DIGITS * 3}"


def _as_ometer_wrote(column: str) -> str:
    """SQL: whether ``column`` holds a time in SQLAlchemy's text, which the copy reads."""
    return (
        f"(typeof({column}) = 'text' AND ({column} GLOB '{_WRITTEN}' "
        f"OR {column} GLOB '{_WRITTEN_FRACTION}') AND {_sqlite_micros(column)} IS NOT NULL)"
    )


def _utc_text(value: object) -> str | None:
    """An ISO 8601 time as SQLAlchemy's text of its UTC instant (naive is UTC, as ometer
    stores it); None for anything else: a number could be seconds or microseconds."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")


def _times_as_ometer_wrote_them() -> None:
    """Rewrite each span time another tool wrote as the text of its UTC instant, so the copy
    reads it; refuse the migration, naming them, for spans whose times name no instant."""
    bind = op.get_bind()
    odd = bind.execute(
        sa.text(
            f"SELECT id, started_at, ended_at FROM spans WHERE NOT {_as_ometer_wrote('started_at')}"
            f" OR (ended_at IS NOT NULL AND NOT {_as_ometer_wrote('ended_at')})"
        )
    ).all()
    unread: list[str] = []
    for row_id, started, ended in odd:
        times = {"started_at": _utc_text(started), "ended_at": _utc_text(ended)}
        wrong = [
            f"span {row_id!r} has {column} "
            + repr(value[:64] if isinstance(value, str | bytes) else value)
            for column, value in (("started_at", started), ("ended_at", ended))
            if value is not None and times[column] is None
        ]
        unread += wrong
        if wrong:
            continue
        bind.execute(
            sa.text("UPDATE spans SET started_at = :started_at, ended_at = :ended_at "
                    "WHERE id = :id"),
            {**times, "id": row_id},
        )  # fmt: skip
    if unread:
        from ollama_meter.errors import LedgerError

        more = f" and {len(unread) - 5} more" if len(unread) > 5 else ""
        raise LedgerError(
            f"the ledger at {bind.engine.url.render_as_string()} holds span times that name "
            f"no instant: {'; '.join(unread[:5])}{more}; nothing was changed. Set each to its "
            'UTC time as YYYY-MM-DD HH:MM:SS (sqlite3 LEDGER "UPDATE spans SET started_at = '
            "'2026-11-01 10:00:00' WHERE id = '...'\"), or delete the span, then run ometer "
            "db upgrade again"
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
        _times_as_ometer_wrote_them()
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
