"""`ometer limit set` and `limit list` beside a limit row edited by hand in SQL.

With ``rpm = -5`` on default/sales's row, ``limit set hr --rpm 3`` saved the limit and
printed it, then ended with that row's ``error:`` line and exit 1 (its note on caps that never
bind read every limit): a script took the saved limit for a failure. ``limit list`` was that
line alone, every other limit hidden. Both now go on with the rows that can be read and name
the row in a note on stderr, as the gateway puts every other limit in force.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

ABC = (
    "note: the limits of default/sales in the ledger cannot be read: --rpm must be between 1 "
    "and 1,000,000, not -5; fix or delete the row in SQL (`ometer limit set` sets it right)"
)


@pytest.fixture
def db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    return db_url


def test_limit_set_and_list_beside_a_broken_row(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("limit", "set", "sales", "--rpm", "5").code == 0
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE limits SET rpm = -5")
    engine.dispose()
    saved = cli("limit", "set", "hr", "--rpm", "3")
    assert (saved.code, saved.stdout.strip()) == (0, "limits for default/hr: 3 calls/min")
    assert ABC in saved.stderr and "error:" not in saved.stderr
    listed = cli("limit", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert [(row["department"], row["rpm"]) for row in json.loads(listed.stdout)] == [("hr", 3)]
    assert listed.stderr.strip() == ABC
