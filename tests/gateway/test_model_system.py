"""A gateway bounds a hard-budgeted call by its model's own prompt from the first call, on
every server the call may go to (the most of them), as ``/api/show`` says it."""

from __future__ import annotations

import dataclasses

from ollama_meter.budgets import MESSAGE_TOKENS, Budget
from ollama_meter.config import load_settings
from ollama_meter.gateway import GatewayOptions, create_app
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.testing import DEFAULT_MODELS, OllamaEmulator, expected_counts
from tests._committed import committed
from tests.factories import token_prices
from tests.gateway.conftest import TestClient

SYSTEM = " ".join(f"rule{n}" for n in range(300))
WITH_SYSTEM = dataclasses.replace(DEFAULT_MODELS[0], system=SYSTEM)
HI = [{"role": "user", "content": "hi"}]
CAP = 10


def test_the_first_calls_are_bounded_by_the_largest_prompt_any_server_adds(
    sqlite_url: str,
) -> None:
    """Two servers, one whose model has a 300-word SYSTEM: room for one such bound admits one
    call at a time, whichever server serves it; no call counts past its bound."""
    model = WITH_SYSTEM.name
    inputs, _ = expected_counts(model, HI)
    bound = (len(b"hi") + 32 + MESSAGE_TOKENS + len(SYSTEM) + MESSAGE_TOKENS) * 1000 + CAP * 2000
    with (
        OllamaEmulator(models=[WITH_SYSTEM]) as told,
        OllamaEmulator(models=DEFAULT_MODELS[:1]) as plain,
    ):
        ledger = open_ledger(sqlite_url)
        ledger.add_price_rule(token_prices())
        ledger.save_budget(
            Budget(tenant="default", department="sales", period="day", limit=bound, currency="USD")
        )
        settings = load_settings(
            db_url=sqlite_url,
            ollama_host=plain.url,
            upstreams=f"{plain.url}#slots=4,{told.url}#slots=4",
            discovery_interval=3600,
        )
        body = {"model": model, "messages": HI, "stream": False, "options": {"num_predict": CAP}}
        headers = {"x-ometer-department": "sales"}
        with TestClient(create_app(settings, GatewayOptions())) as client:
            first = client.post("/api/chat", json=body, headers=headers)
            second = client.post("/api/chat", json=body, headers=headers)
            assert (first.status_code, second.status_code) == (200, 429), second.text
            spans = committed(ledger).latest(SpanFilter(), 10)
        assert len(told.requests_to("/api/show")) == len(plain.requests_to("/api/show")) == 1
    ok = [s for s in spans if s.status == "ok"]
    assert len(ok) == 1
    assert ok[0].input_tokens in (inputs, inputs + 300)  # the SYSTEM counted where it is sent
    assert sum(s.cost_total for s in spans) <= bound
