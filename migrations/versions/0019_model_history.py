"""A model's recent calls are found by name, in every spelling, without a pass over the spans.

A hard budget bounds a time-priced call with the latest successful calls to its model, read
on every such call's path. The read matched ``request_model`` exactly, with no index on it:
a model called in another spelling (``LLAMA3.1:8B`` for ``llama3.1:8b``) got none of the
model's history, and a model with few calls or none read every span (40 ms at 100,000 spans).
``ix_spans_request_model`` (``request_model``, ``status``, ``id``) finds a name's latest
successful calls directly; ``model_names`` holds each name a successful call asked for, so a
model's spellings are known without reading the spans. Filled here from the spans there are.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_spans_request_model"), "spans", ["request_model", "status", "id"])
    op.create_table(
        "model_names",
        sa.Column("name", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_model_names")),
    )
    op.execute(
        "INSERT INTO model_names (name) "
        "SELECT DISTINCT request_model FROM spans WHERE status = 'ok'"
    )


def downgrade() -> None:
    op.drop_table("model_names")
    op.drop_index("ix_spans_request_model", table_name="spans")
