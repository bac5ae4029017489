"""A gateway reads the ledger's limits row by row: one row broken in SQL spoils no other."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from ollama_meter.gateway._rates import OverLimit, RateLimits
from ollama_meter.gateway._rates_kept import read_limits
from ollama_meter.ledger import Ledger
from ollama_meter.records import Limit


def _calls_let_in(rates: RateLimits, tenant: str, department: str) -> int:
    """How many calls in a row ``rates`` admits now (at most 10)."""
    for count in range(10):
        try:
            rates.admit(tenant, department)
        except OverLimit:
            return count
    return 10


@pytest.mark.parametrize(
    ("column", "value"),
    [("rpm", "abc"), ("weight", 0), ("tpm", -5), ("concurrency", 2.5), ("updated_at", "garbage")],
)
def test_one_limit_row_broken_in_sql_leaves_every_other_limit_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, column: str, value: object
) -> None:
    """One row edited by hand to a value `ometer limit set` refuses made the whole read fail:
    a gateway started then ran with no limit at all, for every tenant; one running kept what
    it had read before, so every `ometer limit set` after it was never applied."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = Ledger(url)
    ledger.set_limit(Limit("acme", "sales", rpm=1))
    ledger.set_limit(Limit("globex", "hr", rpm=2))
    running = RateLimits()
    assert asyncio.run(read_limits(ledger, running))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE limits SET {column} = ? WHERE tenant = 'globex'", (value,))
    engine.dispose()
    ledger.set_limit(Limit("acme", "support", rpm=3))  # set after the row broke
    started = RateLimits()  # a gateway started now
    for rates in (running, started):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "ollama_meter.gateway"):
            assert asyncio.run(read_limits(ledger, rates))
        assert _calls_let_in(rates, "acme", "sales") == 1
        assert _calls_let_in(rates, "acme", "support") == 3
        (warning,) = [r.getMessage() for r in caplog.records]
        assert warning.startswith("the limits of globex/hr in the ledger cannot be read: ")
        assert warning.endswith("; keeping the limits read before for them")
    # The broken row's own scope: what the running gateway read before; a new one has none.
    assert _calls_let_in(running, "globex", "hr") == 2
    assert _calls_let_in(started, "globex", "hr") == 10


def test_several_broken_limit_rows_are_one_warning_a_read(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On either database: the rows read one by one in the one read transaction."""
    url = db_url
    ledger = Ledger(url)
    for department in ("hr", "it", "ops"):
        ledger.set_limit(Limit("globex", department, rpm=2))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE limits SET rpm = 0")
    engine.dispose()
    ledger.set_limit(Limit("acme", "sales", rpm=1))
    rates = RateLimits()
    with caplog.at_level(logging.WARNING, "ollama_meter.gateway"):
        assert asyncio.run(read_limits(ledger, rates))
    assert _calls_let_in(rates, "acme", "sales") == 1
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == (
        "the limits of globex/hr in the ledger cannot be read: --rpm must be between 1 and "
        "1,000,000, not 0; fix or delete the row in SQL (`ometer limit set` sets it right); "
        "keeping the limits read before for them (and 2 other rows)"
    )
