"""A hard budget's bound on ``/v1/chat/completions`` holds what Ollama's OpenAI layer writes.

Ollama's OpenAI layer (``FromChatRequest``) gives a ``tool`` message that names no tool the
name of the call its ``tool_call_id`` points to (``nameFromToolCallID``), and the model's
template may write that name with the result. A body names the call once, and each of its
results by an id of a few bytes: counted by the body's bytes, a ten-kilobyte name answered a
thousand times was admitted on a bound of one name (about 0.03 USD here) and could count ten
million prompt tokens (10,000 USD). Each result is now bounded as one that names the tool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._request import facts_of
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}


def chat(name: str, results: int, *, named: bool) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}}
    result = {"role": "tool", "tool_call_id": "c1", "content": "ok"}
    return {
        "model": "llama3.1:8b",
        "stream": False,
        "max_tokens": 1,
        "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            *([{**result, "name": name}] if named else [result]) * results,
        ],
    }


def test_a_tool_result_named_by_its_calls_id_is_bounded_as_one_that_names_the_tool() -> None:
    for name in ("lookup", "look<up&", "ünïcode"):
        by_id = facts_of("openai.chat", chat(name, 3, named=False))
        named = facts_of("openai.chat", chat(name, 3, named=True))
        assert by_id.prompt_bytes == named.prompt_bytes, name
        assert by_id.bound(1) == named.bound(1), name


def test_a_thousand_results_of_one_long_named_call_are_refused_before_ollama(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1000 USD per 1M input tokens
    budget = Budget("acme", "sales", "day", 100_000_000, "USD")  # 100 USD
    gw.ledger.save_budget(budget)
    reply = gw.client.post(
        "/v1/chat/completions", json=chat("n" * 10_000, 1_000, named=False), headers=SALES
    )
    assert reply.status_code == 429, reply.text[:300]
    assert reply.json()["error"]["type"] == "insufficient_quota"
    assert not emulator.requests_to("/v1/chat/completions")
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.cost_total) == ("rejected", "budget_exceeded", 0)
    # The same conversation with its results short of the name's size is admitted and answered.
    reply = gw.client.post(
        "/v1/chat/completions", json=chat("n" * 10_000, 5, named=False), headers=SALES
    )
    assert reply.status_code == 200, reply.text[:300]
