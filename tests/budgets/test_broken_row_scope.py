"""One budget row edited by hand in SQL to what no budget can be binds its own scope only.

Budget 2 (globex/hr) set to a period of ``'fortnight'`` made every read of the budgets fail. A
gateway started before kept the budgets it had read then, for good: a hard budget set (or
lowered) afterwards for acme never bound it, and calls were admitted past a limit of
0.000001 USD. A gateway started after refused every call of every tenant with a 503, and
so did ``ometer chat`` and the Python API, though no budget of theirs was broken. Now the rows
that can be read are in force, and a call the broken row would cover is refused with the
row's own words: the scope the row names (every caller, when its tenant cannot be told).
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa

from ollama_meter.budgets import Budget, BudgetGate
from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger

FORTNIGHT = (
    "budget 2 in the ledger cannot be read: period 'fortnight' is not one of day, week, "
    "month; fix the row in SQL, or remove it with `ometer budget rm 2`"
)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.save_budget(Budget("acme", "sales", "day", 5_000_000, "USD"))
    ledger.save_budget(Budget("globex", "hr", "day", 5_000_000, "USD"))
    return ledger


def _edit(ledger: Ledger, sql: str) -> None:
    engine = sa.create_engine(ledger.url)
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def _scopes(budgets: list[Budget]) -> list[tuple[str, str | None, int]]:
    return [(b.tenant, b.department, b.limit) for b in budgets]


def test_a_broken_row_binds_its_own_scope_and_every_other_budget_stays_in_force(
    ledger: Ledger,
) -> None:
    running = BudgetGate(ledger, tz=UTC, ttl=0)
    assert _scopes(running.budgets_for("acme", "support")) == []
    _edit(ledger, "UPDATE budgets SET period = 'fortnight' WHERE tenant = 'globex'")
    ledger.save_budget(Budget("acme", None, "day", 1, "USD"))  # set after the row broke
    started = BudgetGate(ledger, tz=UTC, ttl=0)
    for gate in (running, started):
        assert _scopes(gate.budgets_for("acme", "support")) == [("acme", None, 1)]
        assert _scopes(gate.budgets_for("acme", "sales")) == [
            ("acme", "sales", 5_000_000),
            ("acme", None, 1),
        ]
        assert gate.budgets_for("globex", "ops") == []  # the broken row is globex/hr's
        assert gate.budgets_for("zeta", "x") == []
        with pytest.raises(LedgerError) as broken:
            gate.budgets_for("globex", "hr")
        assert str(broken.value) == FORTNIGHT
        assert gate.cached_budgets_for("globex", "hr") is None  # only a read says why


@pytest.mark.parametrize(
    "edit",
    ["tenant = 'a' || char(10) || 'b'", "department = 'a b'", "department = NULL"],
)
def test_a_row_whose_scope_cannot_be_told_binds_every_caller_it_may_name(
    ledger: Ledger, edit: str
) -> None:
    """A tenant no caller can have may be anyone's: every call is refused, naming the row.
    A department no caller can have is somewhere in its tenant: that tenant's calls are."""
    _edit(ledger, f"UPDATE budgets SET period = 'fortnight', {edit} WHERE tenant = 'globex'")
    gate = BudgetGate(ledger, tz=UTC, ttl=0)
    refused = [("globex", "hr"), ("globex", "ops")]
    if edit.startswith("tenant"):
        refused.append(("acme", "sales"))
    else:
        assert _scopes(gate.budgets_for("acme", "sales")) == [("acme", "sales", 5_000_000)]
    for who in refused:
        with pytest.raises(LedgerError) as broken:
            gate.budgets_for(*who)
        assert str(broken.value).startswith("budget 2 in the ledger cannot be read: ")
