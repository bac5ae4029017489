"""A PostgreSQL session ended by the server under a gateway's budget check
(``pg_terminate_backend``, a DBA's or a pooler's): the server still answers, so the call is
checked again on a new session and answered, not refused as if the database were away.

One gateway in this process (``app_on``) on a database of the shared server: nothing here
stops the server, only this database's sessions are ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import create_engine, text

from ollama_meter.budgets import Budget
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.pricing import PriceRule
from ollama_meter.testing import OllamaEmulator

WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
)


def _until(found: Callable[[], bool]) -> None:
    for _ in range(6000):  # a hang guard, not a measure
        if found():
            return
        threading.Event().wait(0.01)
    raise AssertionError("no session of the gateway waited for the lock")


def test_a_call_whose_budget_session_the_server_ended_is_checked_again_and_answered(
    pg_url: str, emulator: OllamaEmulator, app_on: Any
) -> None:
    """The session that took the call's budget lease was ended while it waited for a lock
    another session held: the call was refused, 503 ``ledger_unavailable`` ("... cannot be
    checked ... Retry when the database is back"), though the server answered throughout
    and the next call passed."""
    setup = Ledger(pg_url)
    setup.add_price_rule(PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(1000)))
    budget = Budget(
        tenant="default", department="sales", period="month", limit=10**9, currency="USD"
    )
    setup.save_budget(budget)
    setup.dispose()
    gw = app_on(emulator.url, pg_url)
    answers: list[Any] = []

    def call() -> None:
        answers.append(
            gw.client.post(
                "/api/chat",
                headers={"X-Ometer-Department": "sales"},
                json={"model": "llama3.1:8b", "stream": False,
                      "messages": [{"role": "user", "content": "hi"}]},
            )
        )  # fmt: skip

    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as holder, engine.connect() as admin:
            holder.execute(text("BEGIN"))
            holder.execute(text("LOCK TABLE budget_reservations IN ACCESS EXCLUSIVE MODE"))
            caller = threading.Thread(target=call)
            caller.start()
            _until(lambda: bool(admin.execute(text(WAITING)).all()))
            ended = admin.execute(text(WAITING.replace("pid", "pg_terminate_backend(pid)", 1)))
            assert ended.all() == [(True,)]
            holder.execute(text("ROLLBACK"))
            caller.join(60)
    finally:
        engine.dispose()
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.id, span.status, span.department) == (
        answer.headers["x-ometer-span-id"],
        "ok",
        "sales",
    )
