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


def test_keys_list_beside_a_broken_key_row(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    """A key row edited so (a department with a blank) was `keys list`'s one `error:` line:
    every other key hidden from the admin who came to revoke one."""
    assert cli("keys", "create", "--dept", "sales", "--name", "old").code == 0
    assert cli("keys", "create", "--dept", "hr", "--name", "bot").code == 0
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET department = 'a b' WHERE id = 1")
    engine.dispose()
    listed = cli("keys", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert [(key["id"], key["name"]) for key in json.loads(listed.stdout)] == [(2, "bot")]
    assert listed.stderr.startswith("note: key 1 in the ledger cannot be read: ")
    assert listed.stderr.strip().endswith(
        "fix or delete the row in SQL (`ometer keys create` makes a new key)"
    )
