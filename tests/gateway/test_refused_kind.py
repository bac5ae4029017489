"""A gateway's own refusal (its hard budget, its rate limit) is no failure of Ollama's.

The gateway names the kind of its refusal in ``X-Ometer-Refused``. An ometer client reads
it: a budget's refusal is :class:`GatewayBudgetExceeded` (exit 3, as a budget of its own
refuses), never retried; neither kind counts against the model on the client's circuit
breaker. Before, the client took a budget's 429 for Ollama rate limiting: after three
refusals it said the model "failed 3 calls in a row" and refused every call for a minute,
also once the budget was raised, and ``ometer chat`` exited 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget
from ollama_meter.errors import GatewayBudgetExceeded, RateLimited, UpstreamError
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import Limit
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]
MODEL = "llama3.1:8b"


def test_a_gateway_budgets_refusals_leave_the_model_to_other_calls(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, sqlite_url, config={"department": "ops"})
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(Budget("default", "ops", "month", 1, "USD"))
    client_ledger = f"{sqlite_url}-client"  # another ledger: the client records its own spans
    with MeteredClient(gw.url, db_url=client_ledger) as client:
        for _ in range(4):  # past the breaker's three failures in a row
            with pytest.raises(UpstreamError) as refused:
                client.chat(MODEL, HI)
            error = refused.value
            assert isinstance(error, GatewayBudgetExceeded), error
            assert isinstance(error, RateLimited)  # what catching Ollama's 429 catches still
            assert (error.error_type, error.exit_code, error.status_code) == (
                "budget_exceeded",
                3,
                429,
            )
            assert "budget" in str(error) and "Ollama at" not in str(error)
        gw.ledger.save_budget(Budget("default", "ops", "month", 10**12, "USD"))  # raised
        assert gw.meter.budgets is not None
        gw.meter.budgets.cache.expire()  # read again at the next call
        assert client.chat(MODEL, HI).message.content  # not refused by a circuit: answered
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    # one attempt per refused call (never retried), then the answered call
    assert [(s.status, s.error_type) for s in reversed(spans)] == [
        ("rejected", "budget_exceeded")
    ] * 4 + [("ok", None)]
    mine = Ledger(client_ledger).latest(SpanFilter(), 10)
    assert [(s.status, s.error_type, s.upstream_host) for s in reversed(mine)] == [
        ("error", "budget_exceeded", "")
    ] * 4 + [("ok", None, gw.url)]


def test_a_gateway_rate_limits_refusals_do_not_open_the_models_circuit(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    Ledger(sqlite_url).set_limit(Limit("default", "sales", rpm=1))
    gw = serve_on(emulator.url, sqlite_url)
    with MeteredClient(gw.url, department="sales", db_url=sqlite_url) as client:
        client.chat(MODEL, HI)  # the limit's one call a minute
        for _ in range(4):  # each the gateway's own refusal, none the client's circuit's
            with pytest.raises(RateLimited) as refused:
                client.chat(MODEL, HI)
            assert refused.value.error_type == "rate_limited"
            assert "gateway" in str(refused.value) and "over its limit" in str(refused.value)


def test_ometer_chat_exits_3_when_the_gateways_budget_refuses(  # type: ignore[no-untyped-def]
    cli, emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], monkeypatch
) -> None:
    gw = serve_on(emulator.url, sqlite_url, config={"department": "ops"})
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(Budget("default", "ops", "month", 1, "USD"))
    monkeypatch.setenv("OLLAMA_HOST", gw.url)
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    result = cli("chat", "-m", MODEL, "hi")
    assert result.code == 3, result.stderr  # as a budget of its own refuses: not 1
    assert f"the gateway at {gw.url} refused the call (HTTP 429): hard budget" in result.stderr
    assert "Traceback" not in result.stderr
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)  # the gateway's refusal, the call's one record
    assert [(s.source, s.status, s.error_type) for s in spans] == [
        ("gateway", "rejected", "budget_exceeded")
    ]


def test_a_gateway_behind_a_gateway_counts_its_budget_refusals_on_no_circuit(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], tmp_path: Path
) -> None:
    inner = serve_on(emulator.url, sqlite_url, config={"department": "ops"})
    inner.ledger.add_price_rule(token_prices())
    inner.ledger.save_budget(Budget("default", "ops", "month", 1, "USD"))
    outer = serve_on(inner.url, f"sqlite:///{tmp_path / 'outer.db'}", config={"department": "ops"})
    body = {"model": MODEL, "messages": HI, "stream": False}
    for _ in range(4):  # past the outer gateway's three failures in a row
        answer = outer.client.post("/api/chat", json=body)
        assert answer.status_code == 429, answer.text
        assert "hard budget" in answer.json()["error"]  # the inner gateway's words, not a circuit's
    outer.settle()
    spans = outer.ledger.latest(SpanFilter(), 10)
    assert [(s.status, s.error_type, s.upstream_host) for s in spans] == [
        ("error", "budget_exceeded", "")
    ] * 4
