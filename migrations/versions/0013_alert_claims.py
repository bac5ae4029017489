"""Alerts are claimed while one process delivers them, so no other sends them again meanwhile.

``budget_alerts.claimed_until``: while set and in the future, a process is delivering the
alert and every other process leaves it alone (a process that dies mid-delivery lets its
claim run out). Empty for the alerts already there.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("budget_alerts") as batch:
        batch.add_column(sa.Column("claimed_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("budget_alerts") as batch:
        batch.drop_column("claimed_until")
