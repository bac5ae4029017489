"""``/v1/responses`` with ``previous_response_id`` has no bound in its body.

Ollama keeps each Responses conversation it answered (its input and output items, up to
64 MiB, for 30 minutes) and puts it before the input of a request that names it by
``previous_response_id``: a body of a few bytes can send a prompt of millions of tokens.
Go's decoder reads that key in any case. A hard budget refuses such a call before it reaches
Ollama, as it refuses web search on ``/v1/messages``; without one it goes through as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._request import facts_of
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}


@pytest.mark.parametrize(
    ("continued", "unbounded"),
    [
        ({"previous_response_id": "resp_1"}, True),
        ({"Previous_Response_ID": "resp_1"}, True),  # Go matches the key in any case
        ({"previous_response_id": None}, False),  # null: no continuation
        ({}, False),
    ],
)
def test_a_continued_conversation_has_no_bound(continued: dict[str, Any], unbounded: bool) -> None:
    facts = facts_of("openai.responses", {"input": "hi", **continued})
    assert (facts.unbounded is not None) is unbounded
    assert facts_of("openai.chat", {"messages": [], **continued}).unbounded is None


def test_a_hard_budget_refuses_a_continued_conversation_before_ollama(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(Budget("acme", "sales", "day", 10**12, "USD"))
    body = {"model": "llama3.1:8b", "input": "and then?", "previous_response_id": "resp_1"}
    reply = gw.client.post("/v1/responses", json=body, headers=SALES)
    assert reply.status_code == 429, reply.text[:300]
    assert "previous_response_id" in reply.json()["error"]["message"]
    assert not emulator.requests_to("/v1/responses")
    (span,) = gw.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.error_type, span.cost_total) == ("rejected", "budget_exceeded", 0)
    # No hard budget: it goes to Ollama as it came.
    reply = gw.client.post("/v1/responses", json=body, headers={"X-Ometer-Department": "ops"})
    assert reply.status_code == 200, reply.text[:300]
    assert len(emulator.requests_to("/v1/responses")) == 1


@pytest.mark.parametrize(
    ("operation", "tool"),
    [
        # Ollama's Responses layer searches the web itself, and chats again over the results
        ("openai.responses", {"type": "web_search"}),
        ("openai.responses", {"Type": "web_search"}),  # Go matches the key in any case
        ("anthropic.messages", {"TYPE": "web_search_20250305", "name": "web_search"}),
    ],
)
def test_a_web_search_in_any_spelling_has_no_bound(operation: str, tool: dict[str, Any]) -> None:
    body = {"input": "news?", "messages": [{"role": "user", "content": "news?"}], "tools": [tool]}
    assert facts_of(operation, {**body, "max_tokens": 10}).unbounded is not None
    plain = {"type": "function", "name": "look", "parameters": {}}
    assert facts_of(operation, {**body, "tools": [plain], "max_tokens": 10}).unbounded is None


def test_a_hard_budget_refuses_a_responses_web_search_before_ollama(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(Budget("acme", "sales", "day", 10**12, "USD"))
    for tool in ({"type": "web_search"}, {"Type": "web_search"}):
        body = {"model": "llama3.1:8b", "input": "news?", "tools": [tool]}
        reply = gw.client.post("/v1/responses", json=body, headers=SALES)
        assert reply.status_code == 429, reply.text[:300]
        assert "tools[0] is a web search" in reply.json()["error"]["message"]
    assert not emulator.requests_to("/v1/responses")


def found(namespace: str, tools: int) -> dict[str, Any]:
    """A tool_search_output naming ``tools`` small tools in one namespace."""
    inner = [{"type": "function", "name": f"t{i}"} for i in range(tools)]
    return {
        "type": "tool_search_output",
        "call_id": "c1",
        "tools": [{"type": "namespace", "name": namespace, "tools": inner}],
    }


def test_a_namespace_of_found_tools_is_bounded_as_ollama_writes_each_name() -> None:
    # Ollama writes a tool_search_output's tools as a tool message, each tool of a namespace
    # named "namespace.tool": a long namespace named once in the body is written once a tool.
    long, short = "n" * 10_000, "n"
    for tools in (1, 100, 1_000):
        grown = facts_of("openai.responses", {"input": [found(long, tools)]}).prompt_bytes
        base = facts_of("openai.responses", {"input": [found(short, tools)]}).prompt_bytes
        assert grown - base >= (len(long) - len(short)) * tools, tools


def test_a_call_named_once_and_answered_a_thousand_times_is_bounded_as_a_thousand_names() -> None:
    # Ollama gives a call's output the call's name (as it gives a tool_search_output
    # "tool_search"), which the template may write with each result.
    def items(name: str, outputs: int) -> list[dict[str, Any]]:
        call = {"type": "function_call", "call_id": "c1", "name": name, "arguments": "{}"}
        result = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
        return [call, *[result] * outputs]

    long, short = "n" * 10_000, "n"
    for outputs in (1, 1_000):
        grown = facts_of("openai.responses", {"input": items(long, outputs)}).prompt_bytes
        base = facts_of("openai.responses", {"input": items(short, outputs)}).prompt_bytes
        assert grown - base >= (len(long) - len(short)) * (outputs + 1), outputs
