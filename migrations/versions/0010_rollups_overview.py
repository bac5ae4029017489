"""Overview rollup rows, summed over users, statuses and error types, and a key that finds them.

Most reads group by none of the user, the status or the error type. Since 0009 they
read rows summed over users (user ``*``), but still one per status and error type:
six rows for each department and model on a busy day where one would do. Now:

- ``rollups`` gains ``errors`` (calls of an error status) and ``unpriced_usage``
  (unpriced calls that succeeded, and unpriced failures that consumed tokens): the
  two sums reads took from the status, kept as the spans arrive instead.
- The rows for all users become overview rows: user, status and error type are all
  ``*``, made afresh from the detail rows (so months whose spans were pruned get
  them too). Failures and reads by user read the detail rows.
- The key names the user right after the cell, so the overview rows of a cell are
  one range of the key instead of being picked out of every user's rows.

PostgreSQL changes the table in place. SQLite cannot change a table's key, so there
the table is copied, in the new key's order, into one made with it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMS = (
    "requests", "input_tokens", "output_tokens", "busy_ns", "load_ns", "cost_tokens",
    "cost_compute", "cost_energy", "cost_fee", "cost_total", "unpriced", "unpriced_tokens",
    "cold_loads", "cold_load_ns",
)  # fmt: skip
_FOLDED = ("errors", "unpriced_usage")
_KEY_0009 = ("grain", "start", "tenant", "department", "user", "model", "currency", "status",
             "error_type")  # fmt: skip
_KEY_0010 = ("grain", "start", "user", "tenant", "department", "model", "currency", "status",
             "error_type")  # fmt: skip
_FOLDS = {  # as ollama_meter.ledger._cells.measures_of folds a span's status in
    "errors": "CASE WHEN status IN ('error', 'interrupted') THEN requests ELSE 0 END",
    "unpriced_usage": "CASE WHEN status = 'ok' THEN unpriced ELSE unpriced_tokens END",
}


def _names(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _sqlite_copy(key: Sequence[str], sums: Sequence[str], select_sums: Sequence[str]) -> None:
    """Copy the detail rows into a new ``rollups`` keyed by ``key``, ``sums`` selected as given."""
    op.create_table(
        "rollups_rekeyed",
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(32), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in sums),
        sa.PrimaryKeyConstraint(*key, name="pk_rollups"),
        sqlite_with_rowid=False,
    )
    op.execute(
        f"INSERT INTO rollups_rekeyed ({_names([*_KEY_0009, *sums])}) "
        f"SELECT {_names(_KEY_0009)}, {', '.join(select_sums)} FROM rollups "
        f"WHERE \"user\" != '*' ORDER BY {_names(key)}"
    )
    op.drop_table("rollups")
    op.rename_table("rollups_rekeyed", "rollups")


def _summed_over(anyone: Sequence[str], sums: Sequence[str]) -> None:
    """Add rows summed over the ``anyone`` columns (set to ``*``) from the detail rows."""
    kept = [name for name in _KEY_0009 if name not in anyone]
    stars = ", ".join("'*'" for _ in anyone)
    summed = ", ".join(f'SUM("{name}")' for name in sums)
    op.execute(
        f"INSERT INTO rollups ({_names([*kept, *anyone, *sums])}) "
        f"SELECT {_names(kept)}, {stars}, {summed} FROM rollups "
        f"WHERE \"user\" != '*' GROUP BY {_names(kept)}"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_copy(_KEY_0010, [*_SUMS, *_FOLDED], [_names(_SUMS), *_FOLDS.values()])
    else:
        for name in _FOLDED:
            op.add_column("rollups", sa.Column(name, sa.BigInteger(), nullable=False,
                                               server_default="0"))  # fmt: skip
            op.alter_column("rollups", name, server_default=None)
        op.execute("DELETE FROM rollups WHERE \"user\" = '*'")
        op.execute(f"UPDATE rollups SET {', '.join(f'{n} = {e}' for n, e in _FOLDS.items())}")
        op.drop_constraint("pk_rollups", "rollups", type_="primary")
        op.create_primary_key("pk_rollups", "rollups", list(_KEY_0010))
    _summed_over(("user", "status", "error_type"), [*_SUMS, *_FOLDED])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_copy(_KEY_0009, _SUMS, [_names(_SUMS)])
    else:
        op.execute("DELETE FROM rollups WHERE \"user\" = '*'")
        for name in _FOLDED:
            op.drop_column("rollups", name)
        op.drop_constraint("pk_rollups", "rollups", type_="primary")
        op.create_primary_key("pk_rollups", "rollups", list(_KEY_0009))
    _summed_over(("user",), _SUMS)
