"""A model's latest successful calls, kept under its one name as spans are written.

A hard budget bounds a time-priced call with the latest successful calls to its model. The
read matched ``request_model`` exactly, with no index on it: a model called in another
spelling (``LLAMA3.1:8B`` for ``llama3.1:8b``) got none of the model's history, and a model
with few calls or none read every span (40 ms at 100,000 spans). ``model_history`` holds
each model's latest 32 (``ollama_meter.ledger._history.KEPT``) under the name it counts
under (0018's fold, :func:`_counted`), filled here from the spans there are: one pass over
the successful ones, each spelling's latest taken by the database.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEPT = 32
_USAGE = (
    "input_tokens",
    "output_tokens",
    "prompt_eval_duration_ns",
    "eval_duration_ns",
    "load_duration_ns",
)
_INSERTS = 500


def _counted() -> Callable[[str], str]:
    """0018's own copy of the fold (``counted_model`` as it was then), not copied again."""
    path = next(Path(__file__).parent.glob("0018_*.py"))
    spec = importlib.util.spec_from_file_location("ometer_migration_0018", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fold: Callable[[str], str] = module._counted
    return fold


def _whole(row: Any) -> bool:
    """Whether a row's usage is whole numbers, as the reader takes it (a hand edit is left out)."""
    tokens, durations = row[2:4], row[4:]
    return all(type(v) is int and v >= 0 for v in tokens) and all(
        v is None or (type(v) is int and v >= 0) for v in durations
    )


def upgrade() -> None:
    op.create_table(
        "model_history",
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("prompt_eval_duration_ns", sa.BigInteger(), nullable=True),
        sa.Column("eval_duration_ns", sa.BigInteger(), nullable=True),
        sa.Column("load_duration_ns", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("model", "id", name=op.f("pk_model_history")),
        sqlite_with_rowid=False,
    )
    spans = sa.table("spans", *map(sa.column, ("id", "request_model", "status", *_USAGE)))
    rank = sa.func.row_number().over(partition_by=spans.c.request_model, order_by=spans.c.id.desc())
    ranked = (
        sa.select(spans.c.request_model, spans.c.id, *(spans.c[n] for n in _USAGE), rank.label("r"))
        .where(spans.c.status == "ok")
        .subquery()
    )
    fold = _counted()
    latest: dict[str, list[Any]] = {}
    conn = op.get_bind()
    for row in conn.execute(sa.select(*list(ranked.c)[:-1]).where(ranked.c.r <= _KEPT)):
        if _whole(row) and type(row[0]) is str:
            latest.setdefault(fold(row[0]), []).append(row)
    rows = []
    for model, calls in sorted(latest.items()):
        calls.sort(key=lambda row: row[1], reverse=True)
        rows += [
            {"model": model, "id": row[1], **dict(zip(_USAGE, row[2:], strict=True))}
            for row in calls[:_KEPT]
        ]
    history = sa.table("model_history", *map(sa.column, ("model", "id", *_USAGE)))
    for at in range(0, len(rows), _INSERTS):
        conn.execute(sa.insert(history), rows[at : at + _INSERTS])


def downgrade() -> None:
    op.drop_table("model_history")
