"""Budget ids are never reused: a removed budget's id is not given to the next one.

``budgets`` on SQLite becomes an AUTOINCREMENT table (PostgreSQL's sequence never
reused an id). Alerts and leases hang on a budget's id: a new budget that took the id
of a removed one inherited its alerts, and the thresholds the removed one had reached
that period never fired for the new one.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "budgets", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("budgets", recreate="always"):
            pass
