"""An admin's commands beside a rule, budget, limit or key row edited by hand in SQL: the
others go on.

A price rule of ``per_request = 'abc'`` for ``qwen2.5:*`` made ``ometer pricing set`` (of any
other model), ``pricing list`` and ``budget set`` that row's ``error:`` line and exit 1: a
price could not be set, nor a hard budget, until the row was fixed. A budget row of period
``hourly`` made ``pricing set`` fail alike. Each now works on the rows that can be read
(a call the broken row may cover stays refused, with its words), and ``pricing list`` names
the row in a note.

``limit set`` saved the limit beside a limit row so broken (``rpm = -5``), printed it, then ended
with that row's ``error:`` line and exit 1 (a script took the saved limit for a failure); ``limit
list`` and ``keys list`` were that line alone, every other row hidden.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

ABC = (
    "price rule 1 in the ledger cannot be read: its per_request 'abc' is not a value of the "
    "column's type; fix the row in SQL, or remove it with `ometer pricing rm 1`"
)
LIMIT_NOTE = (
    "note: the limits of default/sales in the ledger cannot be read: --rpm must be between 1 "
    "and 1,000,000, not -5; fix or delete the row in SQL (`ometer limit set` sets it right)"
)


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


def test_limit_set_and_list_beside_a_broken_row(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("limit", "set", "sales", "--rpm", "5").code == 0
    _edit(db, "UPDATE limits SET rpm = -5")
    saved = cli("limit", "set", "hr", "--rpm", "3")
    assert (saved.code, saved.stdout.strip()) == (0, "limits for default/hr: 3 calls/min")
    assert LIMIT_NOTE in saved.stderr and "error:" not in saved.stderr
    listed = cli("limit", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert [(row["department"], row["rpm"]) for row in json.loads(listed.stdout)] == [("hr", 3)]
    assert listed.stderr.strip() == LIMIT_NOTE


def test_keys_list_beside_a_broken_key_row(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    """A key row edited so (a department with a blank) was `keys list`'s one `error:` line:
    every other key hidden from the admin who came to revoke one."""
    assert cli("keys", "create", "--dept", "sales", "--name", "old").code == 0
    assert cli("keys", "create", "--dept", "hr", "--name", "bot").code == 0
    _edit(db, "UPDATE api_keys SET department = 'a b' WHERE id = 1")
    listed = cli("keys", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert [(key["id"], key["name"]) for key in json.loads(listed.stdout)] == [(2, "bot")]
    assert listed.stderr.startswith("note: key 1 in the ledger cannot be read: ")
    assert listed.stderr.strip().endswith(
        "fix or delete the row in SQL (`ometer keys create` makes a new key)"
    )
