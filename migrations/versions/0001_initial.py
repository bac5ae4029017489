"""Initial ledger: spans and price rules.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "spans",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spans")),
    )
    op.create_index("ix_spans_started_at", "spans", ["started_at"])
    op.create_index(
        "ix_spans_tenant_department_started_at", "spans", ["tenant", "department", "started_at"]
    )
    op.create_table(
        "price_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pattern", sa.String(255), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("input_per_1m", sa.String(64), nullable=True),
        sa.Column("output_per_1m", sa.String(64), nullable=True),
        sa.Column("gpu_hour", sa.String(64), nullable=True),
        sa.Column("watts", sa.String(64), nullable=True),
        sa.Column("kwh_price", sa.String(64), nullable=True),
        sa.Column("per_request", sa.String(64), nullable=True),
        sa.Column("fee_per_1m", sa.String(64), nullable=True),
        sa.Column("charge_load", sa.Boolean(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=True),
        sa.Column("effective_until", sa.Date(), nullable=True),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("source_digest", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_rules")),
    )


def downgrade() -> None:
    op.drop_table("price_rules")
    op.drop_index("ix_spans_tenant_department_started_at", table_name="spans")
    op.drop_index("ix_spans_started_at", table_name="spans")
    op.drop_table("spans")
