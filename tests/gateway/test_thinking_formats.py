"""A thinking model's chat with a ``format`` stays within its hard budget's bound.

Ollama runs such a chat in two passes: the first without the format, until the model has
thought and starts to answer; then it cancels that pass and runs the chat again with the
format, the thinking written into the prompt as an assistant message. Only the second
pass is reported: its prompt counts the request's prompt **plus the thinking**, up to the
reply cap. A hard budget that bounded the prompt by the request's bytes admitted a chat of
"hi" on a bound of 42 prompt tokens, and was charged 1,502.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import ollama
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget, CallBound, ShownPrompts, bound_cost
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._request import facts_of
from ollama_meter.pricing import PriceBook
from ollama_meter.testing import DEFAULT_MODELS, THINKING_MODEL, OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

THINKER = replace(THINKING_MODEL, reply_tokens=3_000)  # thinks 1,501 words, then answers
HI = [{"role": "user", "content": "hi"}]
ROUTES = ("/api/chat", "/v1/chat/completions")
_departments = itertools.count()


@pytest.fixture(scope="module")
def thinker() -> Iterator[OllamaEmulator]:
    with OllamaEmulator(models=[*DEFAULT_MODELS, THINKER]) as emu:
        yield emu


def body(route: str, cap: int | None) -> dict[str, Any]:
    if route == "/api/chat":
        options = {} if cap is None else {"options": {"num_predict": cap}}
        return {"model": THINKER.name, "messages": HI, "format": "json", **options}
    capped = {} if cap is None else {"max_tokens": cap}
    shape = {"type": "json_object"}
    return {"model": THINKER.name, "messages": HI, "response_format": shape, **capped}


def test_the_emulator_reports_only_the_second_pass_as_ollama_does(
    thinker: OllamaEmulator,
) -> None:
    client = ollama.Client(host=thinker.url)
    first = client.chat(model=THINKER.name, messages=HI, options={"num_predict": 2_000})
    second = client.chat(
        model=THINKER.name, messages=HI, format="json", options={"num_predict": 2_000}
    )
    assert (first.prompt_eval_count, first.eval_count) == (1, 2_000)  # thinking and reply
    assert first.message.thinking == second.message.thinking
    assert len((first.message.thinking or "").split()) == 1_501
    # The thinking came back in the prompt; the reply had the cap to itself.
    assert (second.prompt_eval_count, second.eval_count) == (1 + 1_501, 2_000)
    assert len(second.message.content.split()) == 2_000


@pytest.fixture
def gateway(app_on: Callable[..., Gateway], thinker: OllamaEmulator, sqlite_url: str) -> Gateway:
    gw = app_on(thinker.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1,000 USD per 1M input tokens, 2,000 output
    return gw


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(ROUTES),
    cap=st.none() | st.integers(1_400, 2_600),
    limit=st.integers(3_000_000, 9_000_000),  # micro-USD: 3 to 9 USD
    stream=st.booleans(),
)
@example(route="/api/chat", cap=2_000, limit=4_500_000, stream=False)
@example(route="/v1/chat/completions", cap=2_000, limit=4_500_000, stream=True)
def test_no_thinking_chat_with_a_format_spends_past_its_hard_limit(
    gateway: Gateway, route: str, cap: int | None, limit: int, stream: bool
) -> None:
    department = f"d{next(_departments)}"
    gateway.ledger.save_budget(Budget("acme", department, "day", limit, "USD"))
    assert gateway.meter.budgets is not None
    gateway.meter.budgets.reload_soon()
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": department}
    sent = {**body(route, cap), "stream": stream}
    reply = gateway.client.post(route, json=sent, headers=who)
    assert reply.status_code in (200, 429), reply.text[:300]
    gateway.settle()
    spans = gateway.ledger.latest(SpanFilter(department=department), 5)
    assert len(spans) == 1
    assert spans[0].cost_total <= limit, (spans[0].input_tokens, spans[0].output_tokens, limit)


def answered(gw: Gateway, route: str, cap: int, limit: int) -> Any:
    department = f"d{next(_departments)}"
    gw.ledger.save_budget(Budget("acme", department, "day", limit, "USD"))
    assert gw.meter.budgets is not None
    gw.meter.budgets.reload_soon()
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": department}
    reply = gw.client.post(route, json={**body(route, cap), "stream": False}, headers=who)
    gw.settle()
    return reply, gw.ledger.latest(SpanFilter(department=department), 5)


@pytest.mark.parametrize("route", ROUTES)
def test_a_chat_that_fits_its_two_passes_is_admitted_and_charged_within_them(
    gateway: Gateway, route: str
) -> None:
    # 2,000 reply tokens (4 USD), and the prompt: "hi" (2 bytes), the template's 32 and 8 for
    # its message, the thinking that comes back in it (at most the cap, 2,000), 8 for the
    # message holding it and 64 for the second pass's own markers: 2,114 tokens, 6.114 USD.
    reply, (span,) = answered(gateway, route, 2_000, 6_114_000)
    assert reply.status_code == 200, reply.text[:300]
    assert (span.input_tokens, span.output_tokens, span.cost_total) == (1_502, 2_000, 5_502_000)
    # A limit that leaves less than the second pass may count is refused before Ollama.
    reply, (span,) = answered(gateway, route, 2_000, 6_113_999)
    assert reply.status_code == 429, reply.text[:300]
    assert (span.status, span.cost_total) == ("rejected", 0)


def test_the_python_api_bounds_the_second_pass_alike(
    thinker: OllamaEmulator, sqlite_url: str
) -> None:
    with MeteredClient(thinker.url, tenant="acme", department="sales", db_url=sqlite_url) as m:
        m.meter.ledger.add_price_rule(token_prices())
        m.meter.ledger.save_budget(Budget("acme", "sales", "day", 6_113_999, "USD"))
        with pytest.raises(BudgetExceeded):
            m.chat(THINKER.name, HI, format="json", options={"num_predict": 2_000})
        m.meter.ledger.save_budget(Budget("acme", "sales", "day", 6_114_000, "USD"))
        assert m.meter.budgets is not None
        m.meter.budgets.reload_soon()
        answer = m.chat(THINKER.name, HI, format="json", options={"num_predict": 2_000})
        assert (answer.prompt_eval_count, answer.eval_count) == (1_502, 2_000)
        spans = m.meter.ledger.latest(SpanFilter(), 5)
        assert [(s.status, s.cost_total) for s in spans] == [("ok", 5_502_000), ("rejected", 0)]
        # Streamed, its thinking and its answer are more pieces than the cap: not cut.
        m.meter.ledger.save_budget(Budget("acme", "sales", "day", 20_000_000, "USD"))
        m.meter.budgets.reload_soon()
        parts = list(
            m.chat(THINKER.name, HI, format="json", options={"num_predict": 2_000}, stream=True)
        )
        assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (1_502, 2_000)
        assert m.meter.ledger.latest(SpanFilter(), 1)[0].status == "ok"


@pytest.mark.parametrize(
    ("operation", "asked", "passes"),
    [
        ("chat", {"format": None}, 2),  # Go keeps a null RawMessage as set
        ("chat", {"format": ""}, 2),
        ("chat", {}, 1),
        ("generate", {"format": "json"}, 1),  # generate runs once
        ("openai.chat", {"response_format": {"type": " JSON_object"}}, 2),
        ("openai.chat", {"response_format": {"type": "text"}}, 1),
        ("openai.chat", {"response_format": {}}, 1),
        # Go matches a key in any case, the last one winning: it reads a json_object here
        ("openai.chat", {"response_format": {"type": "text", "TYPE": "json_object"}}, 2),
        ("openai.chat", {"response_format": {"Type": " JSON_schema"}}, 2),
        ("openai.responses", {"text": {"Format": {"type": "json_schema"}}}, 2),
        (
            "openai.responses",
            {"text": {"format": {"type": "text"}, "FORMAT": {"Type": "json_schema"}}},
            2,
        ),
        ("openai.responses", {"text": {"format": {"type": "json_schema", "schema": {}}}}, 2),
        ("openai.responses", {"text": {"format": {"type": "text"}}}, 1),
        ("anthropic.messages", {"max_tokens": 10, "format": "json"}, 1),  # no format there
    ],
)
def test_which_requests_may_take_a_second_pass(
    operation: str, asked: dict[str, Any], passes: int
) -> None:
    said = {"messages": HI, "prompt": "hi", "input": "hi", **asked}
    bound = facts_of(operation, said).bound(100)
    assert bound.passes == passes
    once = facts_of(operation, {k: v for k, v in said.items() if k not in asked}).bound(100)
    extra = 100 + 8 + 64 if passes == 2 else 0  # the thinking, its message, the pass's markers
    assert bound.input_tokens - once.input_tokens == extra


def bound_of(gw: Gateway, route: str, model: str, formatted: bool) -> str:
    """The most a chat of ``model`` may cost, as a refusal says it."""
    department = f"d{next(_departments)}"
    gw.ledger.save_budget(Budget("acme", department, "day", 1, "USD"))
    assert gw.meter.budgets is not None
    gw.meter.budgets.reload_soon()
    sent = {**body(route, 100), "model": model, "stream": False}
    if not formatted:
        sent.pop("format" if route == "/api/chat" else "response_format")
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": department}
    reply = gw.client.post(route, json=sent, headers=who)
    assert reply.status_code == 429, reply.text[:300]
    return reply.text.split("may cost up to ")[1].split(";")[0]


@pytest.mark.parametrize("route", ROUTES)
def test_a_model_its_servers_say_does_not_think_is_bounded_on_one_pass(
    gateway: Gateway, route: str
) -> None:
    # /api/show names the model's capabilities: one without "thinking" runs a chat once.
    assert bound_of(gateway, route, "llama3.1:8b", True) == bound_of(
        gateway, route, "llama3.1:8b", False
    )
    # A thinking model's prompt may hold its thinking: the cap (100), 8 and 64 tokens more.
    once, twice = (bound_of(gateway, route, THINKER.name, f) for f in (False, True))
    assert Decimal(twice) - Decimal(once) == Decimal("0.172")


@pytest.mark.parametrize("route", ROUTES)
def test_a_streamed_two_pass_chat_is_not_cut_for_its_thinking_and_answer_together(
    gateway: Gateway, route: str
) -> None:
    # 1,501 thinking pieces, then 2,000 pieces of answer: more than the cap of 2,000 in all,
    # each pass within it. The span is as the non-streamed one: ok, 1,502 and 2,000 tokens.
    department = f"d{next(_departments)}"
    gateway.ledger.save_budget(Budget("acme", department, "day", 10**9, "USD"))
    assert gateway.meter.budgets is not None
    gateway.meter.budgets.reload_soon()
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": department}
    sent = {**body(route, 2_000), "stream": True}
    if route != "/api/chat":
        sent["stream_options"] = {"include_usage": True}
    reply = gateway.client.post(route, json=sent, headers=who)
    assert reply.status_code == 200
    assert "over_cap" not in reply.text and "streamed more than" not in reply.text
    gateway.settle()
    (span,) = gateway.ledger.latest(SpanFilter(department=department), 5)
    assert (span.status, span.input_tokens, span.output_tokens) == ("ok", 1_502, 2_000)


def test_a_two_pass_call_may_run_the_first_pass_long_before_it_is_cut_on_time() -> None:
    # Priced by the GPU-hour, a call is cut once it has run as long as its bound pays for;
    # the first pass (its prompt, its thinking) runs before the pass Ollama reports, and its
    # thinking (up to the cap) is charged as the generation the gateway saw: paid for too.
    rule = replace(token_prices(id=1), gpu_hour=Decimal(3_600))
    book = PriceBook([rule], tz=ZoneInfo("UTC"), currency="USD")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    once = bound_cost(book, "m", now, CallBound(2_114, 2_000), [])
    twice = bound_cost(book, "m", now, CallBound(2_114, 2_000, passes=2), [])
    thinking = 2_000 * 50_000_000  # the cap at 50 ms a reply token: 100 s, 100 USD
    assert (twice.amount, twice.busy_ns) == (once.amount + 100_000_000, once.busy_ns + thinking)
    assert once.busy_ns is not None and once.wait_ns is not None and twice.wait_ns is not None
    assert twice.wait_ns == once.wait_ns + once.busy_ns  # 2 ms a prompt token, 50 a reply's
    assert once.busy_ns == 2_114 * 2_000_000 + 2_000 * 50_000_000


def test_a_server_without_the_model_says_nothing_of_whether_it_thinks(
    thinker: OllamaEmulator,
) -> None:
    # A fleet's server that lacks the model is not sent its calls: its 404 is no "may think".
    with OllamaEmulator(models=[THINKER]) as lacking:
        shown = ShownPrompts([thinker.url, lacking.url])
        assert shown.thinks("llama3.1:8b", blocking=True) is False
        assert shown.thinks(THINKER.name, blocking=True) is True
        assert ShownPrompts([lacking.url]).thinks("llama3.1:8b", blocking=True) is False


def test_the_official_client_through_a_served_gateway_is_held_to_the_second_pass(
    serve_on: Callable[..., Gateway], thinker: OllamaEmulator, sqlite_url: str
) -> None:
    gw = serve_on(thinker.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(Budget("acme", "sales", "day", 6_113_999, "USD"))
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
    client = ollama.Client(host=gw.url, headers=who)
    sent = len(thinker.requests_to("/api/chat"))
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(THINKER.name, HI, format="json", options={"num_predict": 2_000})
    assert refused.value.status_code == 429
    assert len(thinker.requests_to("/api/chat")) == sent  # refused before Ollama
    gw.ledger.save_budget(Budget("acme", "sales", "day", 6_114_000, "USD"))
    assert gw.meter.budgets is not None
    gw.meter.budgets.reload_soon()
    parts = list(
        client.chat(THINKER.name, HI, format="json", options={"num_predict": 2_000}, stream=True)
    )
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (1_502, 2_000)
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 5)
    assert [(s.status, s.cost_total) for s in spans] == [("ok", 5_502_000), ("rejected", 0)]
