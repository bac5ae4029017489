"""Budget ids count on from every id a budget has had, not only the ones left.

0014 rebuilt ``budgets`` on SQLite as an AUTOINCREMENT table, which counted on from the
highest budget still there: the first budget made after that upgrade took the id of the
newest one removed before it, and inherited its alerts (its thresholds reached this
period never fired). The counter is raised to the highest id any budget, alert or lease
has used. (PostgreSQL's sequence never went back.)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USED = """
SELECT MAX(id) FROM (
    SELECT MAX(id) AS id FROM budgets
    UNION ALL SELECT MAX(budget_id) FROM budget_alerts
    UNION ALL SELECT MAX(budget_id) FROM budget_reservations
)
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        f"UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE(({_USED}), 0)) WHERE name = 'budgets'"
    )
    op.execute(
        f"INSERT INTO sqlite_sequence (name, seq) SELECT 'budgets', ({_USED}) "
        f"WHERE ({_USED}) IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'budgets')"
    )


def downgrade() -> None:
    pass  # a counter that is higher than it must be harms nothing
