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


# The new table counts on from the highest id it was given: a budget removed before this
# upgrade, newer than every one left, still has alerts (and maybe leases) under its id.
_COUNT_ON_FROM_EVERY_ID_USED = """
INSERT INTO sqlite_sequence (name, seq)
SELECT 'budgets', used FROM (
    SELECT MAX(id) AS used FROM (
        SELECT MAX(id) AS id FROM budgets
        UNION ALL SELECT MAX(budget_id) FROM budget_alerts
        UNION ALL SELECT MAX(budget_id) FROM budget_reservations
    )
) WHERE used IS NOT NULL
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "budgets", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
        op.execute("DELETE FROM sqlite_sequence WHERE name = 'budgets'")
        op.execute(_COUNT_ON_FROM_EVERY_ID_USED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("budgets", recreate="always"):
            pass
