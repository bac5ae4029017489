"""A stream is charged at least what the gateway saw of it, and no more than its cap.

Ollama streams a reply about a token a chunk (it may join pieces, never split one), so a
stream of 1,000 chunks is at least 1,000 reply tokens whatever its final chunk says: an
upstream (or a proxy before it) that reports ``eval_count: 1`` was charged one. A stream
the gateway cuts at the cap a hard budget admitted it on is charged the cap, what Ollama
honouring ``num_predict`` would have billed: the piece past it is never relayed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import ollama
import openai
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.pricing import PriceRule
from ollama_meter.testing import DEFAULT_MODELS, THINKING_MODEL, Fault, OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hello from the crm bot"}]
OUT_PRICE = 2_000
"""Micro-USD a reply token (2,000 USD per 1M); prompts are free in :data:`ONLY_OUTPUT`."""
ONLY_OUTPUT = PriceRule(pattern="*", currency="USD", output_per_1m=Decimal(2000))
THINKER = replace(THINKING_MODEL, reply_tokens=3_000)  # thinks 1,501 words, then answers
ROUTES = ("/api/chat", "/api/generate", "/v1/chat/completions")
_departments = itertools.count()
SETTINGS = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def department() -> dict[str, str]:
    return {"X-Ometer-Tenant": "acme", "X-Ometer-Department": f"s{next(_departments)}"}


def streamed(gw: Gateway, route: str, model: str, cap: int, who: dict[str, str]) -> int:
    """Stream a call through the official client of ``route``; the pieces of reply it got
    (text or thinking). A stream the gateway cuts raises at its end, after those pieces."""
    got = 0
    if route == "/v1/chat/completions":
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", default_headers=who)
        try:
            for chunk in client.chat.completions.create(
                model=model,
                messages=HI,  # type: ignore[arg-type]
                max_tokens=cap,
                stream=True,
                stream_options={"include_usage": True},
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    got += 1
        except openai.APIError:
            pass
        return got
    said = ollama.Client(host=gw.url, headers=who)
    options = {"num_predict": cap}
    parts: Any = (
        said.chat(model, HI, options=options, stream=True)
        if route == "/api/chat"
        else said.generate(model, "hello from the crm bot", options=options, stream=True)
    )
    try:
        for part in parts:
            text = part.message.content if route == "/api/chat" else part.response
            thought = part.message.thinking if route == "/api/chat" else part.thinking
            got += bool(text or thought)
    except ollama.ResponseError:
        pass
    return got


def span_of(gw: Gateway, who: dict[str, str]) -> Any:
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(department=who["X-Ometer-Department"]), 5)
    return span


@pytest.fixture
def priced(serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    gw = serve_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1,000 micro-USD a prompt token, 2,000 a reply's
    return gw


@SETTINGS
@given(route=st.sampled_from(ROUTES), cap=st.integers(1, 40))
def test_an_upstream_that_reports_one_token_of_a_long_stream_is_charged_the_stream(
    priced: Gateway, emulator: OllamaEmulator, route: str, cap: int
) -> None:
    emulator.inject(Fault.UNDERCOUNT)  # streams the reply, reports 1 prompt and 1 reply token
    who = department()
    pieces = streamed(priced, route, "llama3.1:8b", cap, who)
    assert 1 <= pieces <= cap
    span = span_of(priced, who)
    assert (span.status, span.input_tokens, span.output_tokens) == ("ok", 1, pieces)
    # Past one piece, not what Ollama said but what the gateway saw
    assert span.token_source == ("estimated" if pieces > 1 else "reported")
    assert (span.cost_tokens, span.cost_total) == (1_000 + pieces * 2_000,) * 2


def test_an_honest_stream_is_charged_as_reported(priced: Gateway) -> None:
    who = department()
    pieces = streamed(priced, "/api/chat", "llama3.1:8b", 40, who)
    span = span_of(priced, who)
    assert (span.output_tokens, span.token_source) == (pieces, "reported")


@pytest.fixture
def capped(serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    """A served gateway where only reply tokens cost: a call's bound is its cap's price."""
    gw = serve_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(ONLY_OUTPUT)
    return gw


def hard(gw: Gateway, who: dict[str, str], limit: int) -> None:
    gw.ledger.save_budget(Budget("acme", who["X-Ometer-Department"], "day", limit, "USD"))
    assert gw.meter.budgets is not None
    gw.meter.budgets.reload_soon()


@SETTINGS
@given(route=st.sampled_from(ROUTES), cap=st.integers(1, 7))
def test_a_stream_cut_at_its_cap_is_charged_the_cap_and_the_budget_holds_exactly(
    capped: Gateway, emulator: OllamaEmulator, route: str, cap: int
) -> None:
    """A limit of exactly the cap's price admits the call; a server that ignores the cap is
    cut there (the client gets ``cap`` pieces), charged ``cap`` tokens: the limit, not past."""
    who = department()
    limit = cap * OUT_PRICE
    hard(capped, who, limit)
    emulator.inject(Fault.IGNORE_CAP)  # the reply is 8 to 40 tokens long, whatever the cap
    assert streamed(capped, route, "llama3.1:8b", cap, who) == cap
    span = span_of(capped, who)
    assert (span.status, span.error_type, span.token_source) == ("error", "over_cap", "estimated")
    assert (span.output_tokens, span.cost_total) == (cap, limit)
    # The budget is spent to the micro-unit, not past it: the next call is refused.
    emulator.inject(Fault.IGNORE_CAP)
    assert streamed(capped, route, "llama3.1:8b", cap, who) == 0
    spans = capped.ledger.latest(SpanFilter(department=who["X-Ometer-Department"]), 5)
    assert [(s.status, s.cost_total) for s in spans] == [("rejected", 0), ("error", limit)]


@SETTINGS
@given(route=st.sampled_from(ROUTES), cap=st.integers(1, 40))
def test_an_under_reporting_upstream_under_a_hard_budget_is_charged_within_its_bound(
    capped: Gateway, emulator: OllamaEmulator, route: str, cap: int
) -> None:
    who = department()
    hard(capped, who, cap * OUT_PRICE)
    emulator.inject(Fault.UNDERCOUNT)
    pieces = streamed(capped, route, "llama3.1:8b", cap, who)
    span = span_of(capped, who)
    assert (span.status, span.output_tokens, span.cost_total) == ("ok", pieces, pieces * OUT_PRICE)
    assert span.cost_total <= cap * OUT_PRICE


@pytest.fixture
def thinking(serve_on: Callable[..., Gateway], sqlite_url: str) -> Any:
    with OllamaEmulator(models=[*DEFAULT_MODELS, THINKER]) as emu:
        gw = serve_on(emu.url, sqlite_url)
        gw.ledger.add_price_rule(token_prices())
        yield gw, emu


@pytest.mark.parametrize("lying", [False, True])
def test_a_two_pass_stream_may_stream_its_thinking_past_the_reply_count(
    thinking: tuple[Gateway, OllamaEmulator], lying: bool
) -> None:
    """A thinking model's chat with a format streams its thinking (1,501 pieces), then the
    second pass's answer (the cap, 2,000): Ollama counts the thinking in the second pass's
    prompt, so 3,501 pieces against 2,000 reply tokens is honest. Under-reported, the thinking
    is charged as prompt and the answer as reply."""
    gw, emu = thinking
    if lying:
        emu.inject(Fault.UNDERCOUNT)
    who = department()
    client = ollama.Client(host=gw.url, headers=who)
    parts = list(
        client.chat(
            THINKER.name,
            [{"role": "user", "content": "hi"}],
            format="json",
            options={"num_predict": 2_000},
            stream=True,
        )
    )
    thought = sum(bool(p.message.thinking) for p in parts)
    said = sum(bool(p.message.content) for p in parts)
    assert (thought, said) == (1_501, 2_000)
    span = span_of(gw, who)
    prompt = 1_501 if lying else 1 + 1_501  # the prompt's own token is not seen in a stream
    assert (span.input_tokens, span.output_tokens) == (prompt, 2_000)
    assert span.token_source == ("estimated" if lying else "reported")
    assert span.cost_total == prompt * 1_000 + 2_000 * 2_000


def test_the_python_api_charges_an_under_reported_stream_its_pieces(
    emulator: OllamaEmulator, sqlite_url: str
) -> None:
    from ollama_meter import MeteredClient

    with MeteredClient(emulator.url, tenant="acme", department="api", db_url=sqlite_url) as m:
        m.meter.ledger.add_price_rule(token_prices())
        emulator.inject(Fault.UNDERCOUNT)
        parts = list(m.chat("llama3.1:8b", HI, options={"num_predict": 30}, stream=True))
        pieces = sum(bool(p.message.content) for p in parts)
        assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (1, 1)  # as Ollama said
        (span,) = m.meter.ledger.latest(SpanFilter(department="api"), 5)
        assert (span.input_tokens, span.output_tokens, span.token_source) == (
            1,
            pieces,
            "estimated",
        )
        assert span.cost_total == 1_000 + pieces * 2_000


def test_four_streams_cut_at_once_spend_one_budget_to_its_limit_and_not_past(
    capped: Gateway, emulator: OllamaEmulator
) -> None:
    """Four callers of one department at once, each admitted on its cap's price, against a
    server that ignores the cap: each is cut and charged its cap, the four the limit exactly
    (charged cap + 1 each, they spent four reply tokens past it); the next is refused."""
    from concurrent.futures import ThreadPoolExecutor

    cap, who = 5, department()
    limit = 4 * cap * OUT_PRICE
    hard(capped, who, limit)
    emulator.inject(Fault.IGNORE_CAP, times=4)
    with ThreadPoolExecutor(4) as pool:
        got = list(
            pool.map(lambda _: streamed(capped, "/api/chat", "llama3.1:8b", cap, who), "abcd")
        )
    assert got == [cap] * 4
    capped.settle()
    spans = capped.ledger.latest(SpanFilter(department=who["X-Ometer-Department"]), 10)
    assert [(s.error_type, s.output_tokens) for s in spans] == [("over_cap", cap)] * 4
    assert sum(s.cost_total for s in spans) == limit
    assert streamed(capped, "/api/chat", "llama3.1:8b", 1, who) == 0  # no room left
    spans = capped.ledger.latest(SpanFilter(department=who["X-Ometer-Department"]), 10)
    assert spans[0].status == "rejected"
