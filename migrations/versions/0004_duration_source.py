"""Spans say who timed their busy time: Ollama ("reported") or the meter ("measured").

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("spans") as batch:
        batch.add_column(sa.Column("duration_source", sa.String(16), nullable=True))
    # Until now every stored duration came from Ollama.
    op.execute(
        "UPDATE spans SET duration_source = 'reported' "
        "WHERE prompt_eval_duration_ns IS NOT NULL OR eval_duration_ns IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("spans") as batch:
        batch.drop_column("duration_source")
