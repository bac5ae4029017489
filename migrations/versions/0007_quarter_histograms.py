"""Quarter-hour latency histograms for all calls together: rollups are rebuilt once.

``rollup_histograms`` gains rows of grain 0 (quarter hour) under the key ``*``, so the
whole organisation's percentiles per local day come from rollups. No table changes;
the rows for spans already recorded are made by the one rebuild this asks for.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_META = sa.table("ledger_meta", sa.column("key", sa.String), sa.column("value", sa.String))


def upgrade() -> None:
    op.execute(_META.update().where(_META.c.key == "rollups").values(value="stale"))


def downgrade() -> None:
    histograms = sa.table("rollup_histograms", sa.column("grain", sa.SmallInteger))
    op.execute(histograms.delete().where(histograms.c.grain == 0))
