"""A price rule row edited by hand in SQL binds the models it may price, and no other.

With ``qwen2.5:*``'s ``per_request`` set to ``'abc'``, a gateway started then answered every
call 503, ``llama3.1:8b``'s too, and a malformed body (which it refuses before any model is
asked) was a 500 with a traceback in the log: the span of the refusal was priced by a book
that could not be read. ``ometer chat -m llama3.1:8b`` exited 1 alike.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator

ABC = (
    "price rule 2 in the ledger cannot be read: its per_request 'abc' is not a value of the "
    "column's type; fix the row in SQL, or remove it with `ometer pricing rm 2`"
)
HI = {"messages": [{"role": "user", "content": "hi"}], "stream": False}


def _priced_then_broken(url: str, edit: str) -> None:
    from ollama_meter.ledger import Ledger
    from ollama_meter.pricing import PriceRule

    ledger = Ledger(url)
    ledger.add_price_rule(PriceRule("llama3.1:*", "USD", per_request=Decimal(1)))
    ledger.add_price_rule(PriceRule("qwen2.5:*", "USD", per_request=Decimal(2)))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE price_rules SET {edit} WHERE id = 2")
    engine.dispose()


def test_a_broken_rule_refuses_only_the_models_it_may_price(
    app_on: Callable[..., Any], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    _priced_then_broken(sqlite_url, "per_request = 'abc'")
    gw = app_on(emulator.url, sqlite_url)
    ok = gw.client.post("/api/chat", json={"model": "llama3.1:8b", **HI})
    assert ok.status_code == 200, ok.text
    refused = gw.client.post("/api/chat", json={"model": "qwen2.5:7b", **HI})
    assert (refused.status_code, refused.json()) == (503, {"error": ABC})
    malformed = gw.client.post("/api/chat", content=b"[1]")
    assert malformed.status_code == 400, malformed.text
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    costs = {s.model: s.cost_total for s in spans if s.status == "ok"}
    assert costs == {"llama3.1:8b": 1_000_000}
    # the refusal is a span too (it had none), unpriced: the rule that may price it is unread
    (qwen,) = [s for s in spans if s.request_model == "qwen2.5:7b"]
    assert (qwen.error_type, qwen.http_status, qwen.error_message) == (
        "ledger_unavailable",
        503,
        ABC,
    )
    assert (qwen.cost_total, qwen.unpriced, refused.headers["X-Ometer-Span-Id"]) == (
        0,
        True,
        qwen.id,
    )


def test_a_rule_whose_pattern_cannot_be_read_may_price_any_model(
    app_on: Callable[..., Any], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    _priced_then_broken(sqlite_url, "per_request = 'abc', pattern = 'a b'")
    gw = app_on(emulator.url, sqlite_url)
    refused = gw.client.post("/api/chat", json={"model": "llama3.1:8b", **HI})
    assert refused.status_code == 503
    assert refused.json()["error"].startswith("price rule 2 in the ledger cannot be read: ")


@pytest.mark.parametrize(("model", "code"), [("llama3.1:8b", 0), ("qwen2.5:7b", 1)])
def test_chat_refuses_only_the_models_a_broken_rule_may_price(
    cli,  # type: ignore[no-untyped-def]
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    code: int,
) -> None:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    _priced_then_broken(sqlite_url, "per_request = 'abc'")
    done = cli("chat", "-m", model, "--option", "num_predict=3", "hi")
    assert done.code == code, done.stderr
    if code:
        assert done.stderr.strip() == f"error: {ABC}"


def test_a_span_a_broken_rule_may_price_is_unpriced_not_priced_by_another_rule() -> None:
    """A call past the admission's check (recovered after a crash, or answered as another
    model) was charged by ``*`` at 5 USD while its own rule, ``qwen2.5:*``, could not be read:
    it is unpriced now, flagged in reports, until a reprice once the row is fixed."""
    from datetime import UTC

    from ollama_meter.pricing import PriceBook, PriceRule
    from ollama_meter.records import UnreadableRule
    from tests.factories import make_span

    book = PriceBook(
        [PriceRule("*", "USD", per_request=Decimal(5))],
        tz=UTC,
        currency="USD",
        unreadable=[UnreadableRule(2, "qwen2.5:*", ABC)],
    )
    for asked, answered in [("qwen2.5:7b", None), ("llama3.1:8b", "qwen2.5:7b")]:
        span = make_span(request_model=asked, response_model=answered, status="ok")
        cost = book.cost_of(span)
        assert (cost.total, cost.unpriced) == (0, True)
    cost = book.cost_of(make_span(request_model="llama3.1:8b", status="ok"))
    assert (cost.total, cost.unpriced) == (5_000_000, False)


def test_reprice_refuses_while_a_rule_cannot_be_read(  # type: ignore[no-untyped-def]
    cli, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It priced every span by the rules it could read: a qwen2.5 call its own rule (2 USD)
    priced was moved to 0, unpriced, by a row broken in SQL."""
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    _priced_then_broken(sqlite_url, "per_request = 'abc'")
    done = cli("reprice", "--since", "2026-01-01")
    assert (done.code, done.stderr.strip()) == (1, f"error: {ABC}")


def test_a_call_a_broken_budget_row_refuses_says_what_to_do_not_to_wait_for_the_database(
    app_on: Callable[..., Any], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """A call a hand-edited budget row may cover was refused with the row's words and left no
    span: a refusal nobody could see in the ledger. It is a span, with the answer's words (the
    row's, and what to do; not "retry when the database is back": the ledger answered)."""
    from ollama_meter.budgets import Budget
    from ollama_meter.ledger import Ledger

    ledger = Ledger(sqlite_url)
    ledger.save_budget(Budget("default", "sales", "day", 5_000_000, "USD"))
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE budgets SET period = 'fortnight' WHERE id = 1")
    engine.dispose()
    gw = app_on(emulator.url, sqlite_url)
    sales = {"X-Ometer-Department": "sales"}
    refused = gw.client.post("/api/chat", json={"model": "llama3.1:8b", **HI}, headers=sales)
    said = refused.json()["error"]
    assert refused.status_code == 503, said
    fortnight = (
        "budget 1 in the ledger cannot be read: period 'fortnight' is not one of day, week, "
        "month; fix the row in SQL, or remove it with `ometer budget rm 1`"
    )
    assert said == fortnight
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.http_status) == ("error", "ledger_unavailable", 503)
    assert span.error_message == fortnight
    assert refused.headers["X-Ometer-Span-Id"] == span.id
