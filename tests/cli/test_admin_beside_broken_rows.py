"""An admin's commands beside a rule or budget row edited by hand in SQL: the others go on.

A price rule of ``per_request = 'abc'`` for ``qwen2.5:*`` made ``ometer pricing set`` (of any
other model), ``pricing list`` and ``budget set`` that row's ``error:`` line and exit 1: a
price could not be set, nor a hard budget, until the row was fixed. A budget row of period
``hourly`` made ``pricing set`` fail alike. Each now works on the rows that can be read
(a call the broken row may cover stays refused, with its words), and ``pricing list`` names
the row in a note.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

ABC = (
    "price rule 1 in the ledger cannot be read: its per_request 'abc' is not a value of the "
    "column's type; fix the row in SQL, or remove it with `ometer pricing rm 1`"
)


@pytest.fixture
def db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    return db_url


def _edit(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def test_prices_and_budgets_are_set_beside_a_broken_rule(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("pricing", "set", "qwen2.5:*", "--per-request", "1").code == 0
    _edit(db, "UPDATE price_rules SET per_request = 'abc' WHERE id = 1")
    priced = cli("pricing", "set", "llama3.1:*", "--per-request", "2")
    assert priced.code == 0, priced.stderr
    assert priced.stdout.startswith("rule 2: llama3.1:* → per_request 2 USD")
    capped = cli("budget", "set", "sales", "--daily", "5")
    assert capped.code == 0, capped.stderr
    listed = cli("pricing", "list")
    assert listed.code == 0, listed.stderr
    assert "llama3.1:*" in listed.stdout and "qwen2.5:*" not in listed.stdout
    assert listed.stderr.strip() == f"note: {ABC}"


def test_a_price_is_set_beside_a_broken_budget(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("budget", "set", "sales", "--daily", "5").code == 0
    _edit(db, "UPDATE budgets SET period = 'hourly' WHERE id = 1")
    priced = cli("pricing", "set", "llama3.1:*", "--per-request", "2")
    assert priced.code == 0, priced.stderr
