"""Alerts say when a hard budget refuses a call, not only when its spend crosses a threshold.

A hard budget refuses a call whose bound does not fit what is left, so its spend may never
reach 100 %: it refused every call while no alert said so. ``budget_alerts.kind`` is
``threshold`` (every alert already there) or ``refused``; a refusal's ``threshold`` is the
highest threshold the spend had reached (0 for none), and ``call_bound_micros`` the most the
refused call could cost. The unique key takes the kind in, so a refusal past 90 % and the
90 % threshold alert are each recorded once.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNIQUE = "uq_budget_alerts_budget_id"


def upgrade() -> None:
    with op.batch_alter_table("budget_alerts") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="threshold")
        )
        batch.add_column(sa.Column("call_bound_micros", sa.BigInteger(), nullable=True))
        batch.drop_constraint(_UNIQUE, type_="unique")
        batch.create_unique_constraint(
            _UNIQUE, ["budget_id", "tenant", "period_start", "kind", "threshold"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM budget_alerts WHERE kind <> 'threshold'")
    with op.batch_alter_table("budget_alerts") as batch:
        batch.drop_constraint(_UNIQUE, type_="unique")
        batch.create_unique_constraint(
            _UNIQUE, ["budget_id", "tenant", "period_start", "threshold"]
        )
        batch.drop_column("call_bound_micros")
        batch.drop_column("kind")
