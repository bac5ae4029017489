"""Latency histograms per model over all tenants and departments: rollups are rebuilt once.

``rollup_histograms`` gains rows under the key (``*``, ``+``, model) per quarter hour,
day and month, so ``perf --by model`` reads a row per model, metric and decade from a
month cell, and a window's open edge from quarter hours, not raw spans. No table changes.
The day and month rows are summed here from the rows per (tenant, department, model), so
days whose spans were pruned have them too; the quarter-hour rows are made by the one
rebuild this asks for, from the spans (reads take quarter hours before the prune horizon
from raw spans, as they did before, and say the calls are gone).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_META = sa.table("ledger_meta", sa.column("key", sa.String), sa.column("value", sa.String))
_BINS = [f"b{index:02d}" for index in range(75)]
_HISTOGRAMS = sa.table(
    "rollup_histograms",
    *(sa.column(name) for name in ("grain", "start", "tenant", "department", "model")),
    *(sa.column(name) for name in ("metric", "decade", *_BINS)),
)


def upgrade() -> None:
    h = _HISTOGRAMS.c
    per_model = (
        sa.select(
            h.grain, h.start, sa.literal("*"), sa.literal("+"), h.model, h.metric, h.decade,
            *(sa.func.sum(h[name]) for name in _BINS),
        )
        .where(h.grain != 0, h.tenant != "*")
        .group_by(h.grain, h.start, h.model, h.metric, h.decade)
    )  # fmt: skip
    op.execute(sa.insert(_HISTOGRAMS).from_select(list(_HISTOGRAMS.c.keys()), per_model))
    op.execute(_META.update().where(_META.c.key == "rollups").values(value="stale"))


def downgrade() -> None:
    h = _HISTOGRAMS.c
    op.execute(_HISTOGRAMS.delete().where(h.tenant == "*", h.department == "+"))
