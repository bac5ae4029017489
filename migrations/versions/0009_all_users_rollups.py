"""Rollup rows for everyone together, so most reads take a fraction of the rows.

- ``rollups`` gains each row summed over users, under the user ``*``: most reads
  group by no user.
- ``rollup_histograms`` gains day and month rows for all calls together (key ``*``),
  as quarter hours had since 0007: the organisation's timings per day.

Both are summed from the rollups already there, not rebuilt from raw spans, so
months whose spans were pruned get them too. No table changes. Rows are made
afresh (deleted first), so running it again is harmless.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMS = (
    "requests", "input_tokens", "output_tokens", "busy_ns", "load_ns", "cost_tokens",
    "cost_compute", "cost_energy", "cost_fee", "cost_total", "unpriced", "unpriced_tokens",
    "cold_loads", "cold_load_ns",
)  # fmt: skip
_BINS = tuple(f"b{index:02d}" for index in range(75))  # HISTOGRAM_BINS at 0009
_ROLLUPS = sa.table(
    "rollups",
    *(sa.column(name) for name in ("grain", "start", "tenant", "department", "user", "model")),
    *(sa.column(name) for name in ("currency", "status", "error_type", *_SUMS)),
)
_HISTOGRAMS = sa.table(
    "rollup_histograms",
    *(sa.column(n) for n in ("grain", "start", "tenant", "department", "model", "metric")),
    *(sa.column(name) for name in ("decade", *_BINS)),
)


def _summed(table: sa.TableClause, kept: Sequence[str], anyone: Sequence[str],
            sums: Sequence[str], where: sa.ColumnElement[bool]) -> None:  # fmt: skip
    """Insert into ``table`` its rows matching ``where`` summed over ``anyone`` (set to ``*``)."""
    c = table.c
    summed = (
        sa.select(
            *(c[k] for k in kept),
            *(sa.literal("*").label(k) for k in anyone),
            *(sa.func.sum(c[s]).label(s) for s in sums),
        )
        .where(where)
        .group_by(*(c[k] for k in kept))
    )
    op.execute(table.insert().from_select([*kept, *anyone, *sums], summed))


def upgrade() -> None:
    r, h = _ROLLUPS.c, _HISTOGRAMS.c
    op.execute(_ROLLUPS.delete().where(r.user == "*"))
    op.execute(_HISTOGRAMS.delete().where(h.grain > 0, h.tenant == "*"))
    _summed(
        _ROLLUPS,
        ("grain", "start", "tenant", "department", "model", "currency", "status", "error_type"),
        ("user",),
        _SUMS,
        r.user != "*",
    )
    _summed(
        _HISTOGRAMS,
        ("grain", "start", "metric", "decade"),
        ("tenant", "department", "model"),
        _BINS,
        sa.and_(h.grain > 0, h.tenant != "*"),
    )


def downgrade() -> None:
    op.execute(_ROLLUPS.delete().where(_ROLLUPS.c.user == "*"))
    op.execute(_HISTOGRAMS.delete().where(_HISTOGRAMS.c.grain > 0, _HISTOGRAMS.c.tenant == "*"))
