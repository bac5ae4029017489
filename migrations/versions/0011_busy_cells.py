"""Busy time per host summed per day and month, so a month's fixed-cost split reads a row a host.

- ``rollup_busy`` gains ``calls``: the calls that started in the minute on the host.
  Rows already there count 1 (they say the host served a call or was busy then,
  which is all a window's hosts need).
- ``rollup_busy_cells`` sums each host's minutes (busy time and calls) per day and
  month of the ledger's zone, made here from the minutes already there, so months
  whose spans were pruned have them too.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The cells are cut where the code that reads them cuts them.
    from ollama_meter.ledger._cells import Grain, floor_cell
    from ollama_meter.ledger._meta import ledger_zone

    op.add_column(
        "rollup_busy", sa.Column("calls", sa.BigInteger(), nullable=False, server_default="1")
    )
    if op.get_bind().dialect.name != "sqlite":  # SQLite cannot drop a default in place
        op.alter_column("rollup_busy", "calls", server_default=None)
    cells = op.create_table(
        "rollup_busy_cells",
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("busy_us", sa.BigInteger(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("grain", "start", "host", name="pk_rollup_busy_cells"),
        sqlite_with_rowid=False,
    )
    bind = op.get_bind()
    # As every read of it: a zone this host's data lacks is a LedgerError that says so.
    zone = ledger_zone(bind)
    sums: dict[tuple[int, int, str], list[int]] = {}
    minutes = bind.execute(sa.text("SELECT start, host, busy_us FROM rollup_busy"))
    for start, host, busy_us in minutes:
        for grain in (Grain.DAY, Grain.MONTH):
            key = (int(grain), floor_cell(grain, start * 10**6, zone) // 10**6, host)
            cell = sums.setdefault(key, [0, 0])
            cell[0] += busy_us
            cell[1] += 1
    op.bulk_insert(
        cells,
        [
            {"grain": grain, "start": start, "host": host, "busy_us": busy, "calls": calls}
            for (grain, start, host), (busy, calls) in sorted(sums.items())
        ],
    )


def downgrade() -> None:
    op.drop_table("rollup_busy_cells")
    op.drop_column("rollup_busy", "calls")  # SQLite 3.35+ drops a column in place
