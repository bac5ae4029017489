"""A PostgreSQL session ended by the server under one of the reads a gateway makes for a call
(``pg_terminate_backend``, a DBA's or a pooler's): the server still answers, so the read is
made again on a new session and the call answered, not refused as if the database were away.

The budget check's own write is in ``test_pg_ended_sessions``. One gateway in this process
(``app_on``) on a database of the shared server: nothing here stops the server, only the
session of this database that waits for the table held is ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ollama_meter.budgets import Budget
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.pricing import PriceRule
from ollama_meter.testing import OllamaEmulator

WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND query ILIKE :table"
)


def _until(found: Callable[[], bool]) -> None:
    for _ in range(6000):  # a hang guard, not a measure
        if found():
            return
        threading.Event().wait(0.01)
    raise AssertionError("no session of the gateway waited for the lock")


@pytest.mark.parametrize("table", ["api_keys", "model_history"])
def test_a_call_whose_read_session_the_server_ended_is_read_again_and_answered(
    pg_url: str, emulator: OllamaEmulator, app_on: Any, table: str
) -> None:
    """The session of the gateway's read of ``table`` for a call was ended while it waited
    for a lock another session held: the API key's answered 503 "the API key cannot be
    checked, so the call was not made: ... the server ended this session", the model's recent
    calls' (what its budget bound is estimated from) 503 "the budget for acme/sales cannot be
    checked", though the server answered throughout and the next call passed."""
    setup = Ledger(pg_url)
    setup.add_price_rule(PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(1000)))
    budget = Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    setup.save_budget(budget)
    _, secret = setup.create_key(name="ci", tenant="acme", department="sales")
    setup.dispose()
    gw = app_on(emulator.url, pg_url, require_key=True)

    def call() -> Any:
        return gw.client.post(
            "/api/chat",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "llama3.1:8b", "stream": False,
                  "messages": [{"role": "user", "content": "hi"}]},
        )  # fmt: skip

    answers: list[Any] = []
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    waiting = {"table": f"%{table}%"}
    try:
        with engine.connect() as holder, engine.connect() as admin:
            holder.execute(text("BEGIN"))
            holder.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            caller = threading.Thread(target=lambda: answers.append(call()))
            caller.start()
            _until(lambda: bool(admin.execute(text(WAITING), waiting).all()))
            ended = admin.execute(
                text(WAITING.replace("pid", "pg_terminate_backend(pid)", 1)), waiting
            )
            assert ended.all() == [(True,)]
            holder.execute(text("ROLLBACK"))
            caller.join(60)
    finally:
        engine.dispose()
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.id, span.status, span.tenant, span.department) == (
        answer.headers["x-ometer-span-id"],
        "ok",
        "acme",
        "sales",
    )
