"""What a call that commits its own span (a server's overload path: its write-behind full)
reads of the ledger after that commit, on the call's path: no look for changed budgets.

The look for budgets changed elsewhere (``budgets_version``) rides in the commit's own
transaction. Made after it, on a connection of its own, a database gone right after the
commit held the call's answer for a connect timeout (``refresh()`` never raises: nothing
was lost, but the caller waited)."""

from __future__ import annotations

import threading
from dataclasses import replace
from decimal import Decimal

from sqlalchemy import event

from ollama_meter import MeteredClient
from ollama_meter.ledger import Ledger
from ollama_meter.pricing import PriceRule
from ollama_meter.records import Budget
from ollama_meter.testing import OllamaEmulator

CHAT = [{"role": "user", "content": "hi"}]


def _statements(client: MeteredClient) -> list[str]:
    """Every SQL statement SQLite runs for the client's ledger on this thread from now on."""
    here = threading.get_ident()
    seen: list[str] = []

    def traced(sql: str) -> None:
        if threading.get_ident() == here:
            seen.append(" ".join(sql.split()).upper())

    engine = client.meter.ledger.engine
    event.listen(engine, "connect", lambda raw, _: raw.set_trace_callback(traced))
    engine.dispose()  # its connections open again, traced
    return seen


def _after_commit(statements: list[str]) -> list[str]:
    """The statements after the COMMIT of the span's insert."""
    insert = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO SPANS"))
    return statements[statements.index("COMMIT", insert) + 1 :]


def _client(url: str, emulator: OllamaEmulator) -> tuple[MeteredClient, Budget]:
    setup = Ledger(url)
    setup.add_price_rule(PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(1000)))
    budget = setup.save_budget(Budget("acme", "sales", period="month", limit=10**9, currency="USD"))
    setup.dispose()
    client = MeteredClient(emulator.url, db_url=url, tenant="acme", department="sales")
    client.meter.keep_fresh()  # as a server: the budgets are looked at after each commit
    assert client.meter.behind is None  # each call commits its own span
    client.chat(model="llama3.1:8b", messages=CHAT)
    return client, budget


def test_a_call_committing_its_own_span_looks_for_changed_budgets_in_that_commit(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """Before: after the span's COMMIT the call read ``ledger_meta`` (budgets_version) in a
    transaction of its own, on the call's path."""
    client, _ = _client(sqlite_url, emulator)
    try:
        statements = _statements(client)
        client.chat(model="llama3.1:8b", messages=CHAT)
        assert [s for s in _after_commit(statements) if "LEDGER_META" in s] == []
    finally:
        client.close()


def test_a_budget_changed_elsewhere_is_read_again_after_the_commit_that_saw_it(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """A commit that finds budgets_version changed reads the budgets again at once (the
    next call is held to the new limit: tests/budgets/test_lowered_limit.py)."""
    client, budget = _client(sqlite_url, emulator)
    try:
        other = Ledger(sqlite_url)
        other.save_budget(replace(budget, limit=10**8))
        other.dispose()
        statements = _statements(client)
        client.chat(model="llama3.1:8b", messages=CHAT)
        assert any(
            s.startswith("SELECT") and "FROM BUDGETS" in s for s in _after_commit(statements)
        )
    finally:
        client.close()
