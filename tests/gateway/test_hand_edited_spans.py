"""A gateway over a ledger whose span or rollup rows another tool wrote: it keeps serving.

A span with a REAL cost, or a rollup row with a text where a count goes, is the ledger's
data to fix, not a reason to refuse calls: a new call is answered and its span recorded,
and /api/dash answers exactly or says which row to fix (never a 500 of a bug).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from ollama_meter.budgets import Budget
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

ASK = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
WHO = {"x-ometer-tenant": "acme", "x-ometer-department": "sales"}


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE spans SET cost_total = 1500.5",
        "UPDATE spans SET input_tokens = 'n/a'",
        "UPDATE spans SET started_at = 'yesterday'",
        "UPDATE rollups SET cost_total = 'n/a'",
        "UPDATE rollups SET requests = 2.5",
    ],
)
def test_a_hostile_row_never_costs_a_new_call_its_span(
    sqlite_app: Gateway, emulator: OllamaEmulator, sqlite_url: str, edit: str
) -> None:
    gw = sqlite_app
    gw.ledger.save_budget(Budget("acme", "sales", "day", 5_000_000_000, "USD"))
    assert gw.client.post("/api/chat", json=ASK, headers=WHO).status_code == 200
    gw.settle()
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(edit)
    engine.dispose()
    reply = gw.client.post("/api/chat", json=ASK, headers=WHO)
    assert reply.status_code == 200, reply.text
    gw.settle()
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM spans").scalar() == 2
    engine.dispose()
    for path in (f"/api/dash?since={datetime.now(UTC):%Y-%m-%d}", "/dashboard"):
        shown = gw.client.get(path)  # the ledger's numbers, or the row to fix (never a 500)
        assert shown.status_code in (200, 503), (path, shown.text)
        if shown.status_code == 503:
            assert "in the ledger cannot be read: its " in shown.text, (path, shown.text)
