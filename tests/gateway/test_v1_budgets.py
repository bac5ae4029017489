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

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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


def go_spellings(name: str) -> st.SearchStrategy[str]:
    """``name`` as Go's decoder still reads it as that field: any case, a long s for s, the
    Kelvin sign for k."""
    spelled = {"s": "sSſ", "k": "kKK"}
    letters = [st.sampled_from(spelled.get(c, c + c.upper())) for c in name]
    return st.tuples(*letters).map("".join)


@pytest.fixture
def sales_budget(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Gateway:
    """A gateway whose acme/sales budget of 100 USD a day refuses :func:`chat` of a thousand
    results of one 10,000-byte name."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1000 USD per 1M input tokens
    gw.ledger.save_budget(Budget("acme", "sales", "day", 100_000_000, "USD"))
    return gw


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    spelled=st.fixed_dictionaries(
        {key: go_spellings(key) for key in ("id", "type", "function", "name", "arguments")}
    )
)
def test_a_call_whose_keys_go_reads_in_any_case_is_refused_as_its_plain_spelling_is(
    sales_budget: Gateway, emulator: OllamaEmulator, spelled: dict[str, str]
) -> None:
    """Ollama's OpenAI layer decodes a tool call into Go structs (``id``, ``function``,
    ``name``...), whose keys it reads in any case. A call spelled ``{"ID": ..., "FUNCTION":
    {"NAME": ...}}`` names its results as the plain one does, so it is never admitted where
    the plain one is refused (it was: its bound counted the name once, not a thousand times)."""
    body = chat("n" * 10_000, 1_000, named=False)
    call = body["messages"][1]["tool_calls"][0]
    function = {spelled["name"]: call["function"]["name"], spelled["arguments"]: "{}"}
    body["messages"][1]["tool_calls"] = [
        {spelled["id"]: "c1", spelled["type"]: "function", spelled["function"]: function}
    ]
    sent = len(emulator.requests_to("/v1/chat/completions"))
    reply = sales_budget.client.post("/v1/chat/completions", json=body, headers=SALES)
    assert reply.status_code in (400, 429), (spelled, reply.status_code, reply.text[:300])
    assert len(emulator.requests_to("/v1/chat/completions")) == sent
