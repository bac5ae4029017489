"""A PostgreSQL session ended by the server under a gateway's budget check, or under any read
it makes for a call (``pg_terminate_backend``, a DBA's or a pooler's): the server still
answers, so the call is checked again on a new session and answered, not refused as if the
database were away.

One gateway in this process (``app_on``) on a database of the shared server: nothing here
stops the server, only this database's sessions are ended.
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
CHAT = {"model": "llama3.1:8b", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


def _until(found: Callable[[], bool]) -> None:
    for _ in range(6000):  # a hang guard, not a measure
        if found():
            return
        threading.Event().wait(0.01)
    raise AssertionError("no session of the gateway waited for the lock")


def _budgeted(pg_url: str, tenant: str) -> Ledger:
    """The ledger at ``pg_url`` with a price for every model and a hard budget for
    ``tenant``/sales that no call here reaches: each call's bound is checked in the ledger."""
    setup = Ledger(pg_url)
    setup.add_price_rule(PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(1000)))
    hard = Budget(tenant, "sales", period="month", limit=10**9, currency="USD")
    setup.save_budget(hard)
    return setup


def _ended_under(pg_url: str, table: str, call: Callable[[], Any]) -> Any:
    """``call``'s answer, made while another session holds ``table`` locked; the session of
    the gateway's that waits to read it is ended by the server (``pg_terminate_backend``)
    meanwhile, and the lock let go."""
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
            ending = WAITING.replace("pid", "pg_terminate_backend(pid)", 1)
            assert admin.execute(text(ending), waiting).all() == [(True,)]
            holder.execute(text("ROLLBACK"))
            caller.join(60)
    finally:
        engine.dispose()
    (answer,) = answers
    return answer


def _recorded(gw: Any, answer: Any) -> tuple[str, str, str, str]:
    """The call ``answer`` answered, as its span is in the ledger: id, status, tenant, department."""
    assert answer.status_code == 200, answer.text
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert span.id == answer.headers["x-ometer-span-id"]
    return span.id, span.status, span.tenant, span.department


def test_a_call_whose_budget_session_the_server_ended_is_checked_again_and_answered(
    pg_url: str, emulator: OllamaEmulator, app_on: Any
) -> None:
    """The session that took the call's budget lease was ended while it waited for a lock
    another session held: the call was refused, 503 ``ledger_unavailable`` ("... cannot be
    checked ... Retry when the database is back"), though the server answered throughout
    and the next call passed."""
    _budgeted(pg_url, "default").dispose()
    gw = app_on(emulator.url, pg_url)
    headers = {"X-Ometer-Department": "sales"}
    answer = _ended_under(
        pg_url,
        "budget_reservations",
        lambda: gw.client.post("/api/chat", headers=headers, json=CHAT),
    )
    assert _recorded(gw, answer)[1:] == ("ok", "default", "sales")


@pytest.mark.parametrize("table", ["api_keys", "model_history"])
def test_a_call_whose_read_session_the_server_ended_is_read_again_and_answered(
    pg_url: str, emulator: OllamaEmulator, app_on: Any, table: str
) -> None:
    """The session of the gateway's read of ``table`` for a call was ended while it waited
    for a lock another session held: the API key's answered 503 "the API key cannot be
    checked, so the call was not made: ... the server ended this session", the model's recent
    calls' (what its budget bound is estimated from) 503 "the budget for acme/sales cannot be
    checked", though the server answered throughout and the next call passed."""
    setup = _budgeted(pg_url, "acme")
    _, secret = setup.create_key(name="ci", tenant="acme", department="sales")
    setup.dispose()
    gw = app_on(emulator.url, pg_url, require_key=True)
    headers = {"Authorization": f"Bearer {secret}"}
    answer = _ended_under(
        pg_url, table, lambda: gw.client.post("/api/chat", headers=headers, json=CHAT)
    )
    assert _recorded(gw, answer)[1:] == ("ok", "acme", "sales")
