"""Price rule ids are never reused: a removed rule's id is not given to the next one.

A span keeps the id of the rule that priced it (``price_rule_id``, shown by ``ometer log``).
On SQLite ``price_rules`` counted on from the highest rule left, so after the newest rule
was removed the next one took its id, and the spans the removed rule had priced then named
a rule that never priced them. The table becomes an AUTOINCREMENT table whose counter
starts past every id a rule or a span has used (PostgreSQL's sequence never went back).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USED = """
SELECT MAX(id) FROM (
    SELECT MAX(id) AS id FROM price_rules
    UNION ALL SELECT MAX(price_rule_id) FROM spans
)
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "price_rules", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass
    op.execute(
        f"UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE(({_USED}), 0)) "
        "WHERE name = 'price_rules'"
    )
    op.execute(
        f"INSERT INTO sqlite_sequence (name, seq) SELECT 'price_rules', ({_USED}) "
        f"WHERE ({_USED}) IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'price_rules')"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("price_rules", recreate="always"):
            pass
