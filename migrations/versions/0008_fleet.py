"""Gateway queue time on spans, and per-department limits (rpm, tpm, concurrency, weight).

``spans.queue_ns`` is how long a call waited in the gateway for a free slot on a
server (NULL for calls that never queued: the CLI's, the SDK's, those made before).
``limits`` holds what ``ometer limit set`` stores.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("spans") as batch:
        batch.add_column(sa.Column("queue_ns", sa.BigInteger(), nullable=True))
    op.create_table(
        "limits",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("weight", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "department", "key_id", name=op.f("pk_limits")),
    )


def downgrade() -> None:
    op.drop_table("limits")
    with op.batch_alter_table("spans") as batch:
        batch.drop_column("queue_ns")
