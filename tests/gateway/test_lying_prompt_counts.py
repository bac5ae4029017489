"""A prompt count no honest Ollama gives for the request is charged as the most it could be.

Ollama's final chunk said ``prompt_eval_count`` = 10^18 (or 2 billion) for a 22-character
prompt, and the call was charged 2**31 - 1 prompt tokens (2,147 USD at 1,000 USD per 1M). A
prompt counts at most a token a byte of what the request sends, its messages' role markers
and the template's own text, plus what the model adds on its own (a Modelfile ``SYSTEM``, at
most ``MAX_HIDDEN_PROMPT``): the call is charged that, says ``estimated``, and a warning
names the count it did not believe. An honest count, however large its request, is charged
as reported.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets._estimate import MAX_HIDDEN_PROMPT, MESSAGE_TOKENS, TEMPLATE_TOKENS
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import Attribution, Opening
from ollama_meter.testing import Fault, OllamaEmulator
from ollama_meter.upstream import Final
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

PROMPT = "hello from the crm bot"
_departments = itertools.count()


def _who() -> dict[str, str]:
    return {"X-Ometer-Tenant": "acme", "X-Ometer-Department": f"d{next(_departments)}"}


@pytest.fixture
def priced(serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    gw = serve_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1,000 micro-USD a prompt token, 2,000 a reply's
    return gw


def _span(gw: Gateway, who: dict[str, str]) -> object:
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(department=who["X-Ometer-Department"]), 5)
    return span


@pytest.mark.parametrize("route", ["chat", "generate"])
def test_a_wild_prompt_count_is_charged_the_most_the_request_could_count(
    priced: Gateway, emulator: OllamaEmulator, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.inject(Fault.INFLATE_COUNTS)  # reports 10**18 prompt tokens
    who = _who()
    client = ollama.Client(host=priced.url, headers=who)
    with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
        if route == "chat":
            client.chat("llama3.1:8b", [{"role": "user", "content": PROMPT}])
        else:
            client.generate("llama3.1:8b", PROMPT)
    span = _span(priced, who)
    markers = MESSAGE_TOKENS if route == "chat" else 0  # a generate's prompt is no message
    most = len(PROMPT) + markers + TEMPLATE_TOKENS + MAX_HIDDEN_PROMPT
    assert span.input_tokens == most  # type: ignore[attr-defined]
    assert span.token_source == "estimated"  # type: ignore[attr-defined]
    assert span.cost_tokens == most * 1_000 + span.output_tokens * 2_000  # type: ignore[attr-defined]
    assert f"can count at most {most}" in caplog.text


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    words=st.integers(1, 3000),
    system=st.sampled_from(["", "You answer in French. " * 400]),
    route=st.sampled_from(["chat", "generate"]),
)
def test_an_honest_count_is_charged_as_reported_however_long_the_prompt(
    priced: Gateway, words: int, system: str, route: str
) -> None:
    """Long prompts and long system messages, each counted by the emulated Ollama: never cut."""
    who = _who()
    client = ollama.Client(host=priced.url, headers=who)
    prompt = " ".join(["tok"] * words)
    if route == "chat":
        messages = [{"role": "system", "content": system}] if system else []
        answer = client.chat("llama3.1:8b", [*messages, {"role": "user", "content": prompt}])
    else:
        answer = client.generate("llama3.1:8b", prompt, system=system or None)
    span = _span(priced, who)
    assert span.input_tokens == answer.prompt_eval_count  # type: ignore[attr-defined]
    assert span.token_source == "reported"  # type: ignore[attr-defined]


def test_a_call_opened_without_its_request_is_charged_as_reported(priced: Gateway) -> None:
    """A call opened with no request's facts (a library caller's own ``Opening``) knows no
    bound of its prompt: its count, however large, is charged as reported (a bound of an
    empty request would have cut every such call to 32,800 tokens)."""
    meter = priced.meter
    opening = Opening("chat", "llama3.1:8b", False, Attribution("acme", "library"))
    call = meter.open(opening)
    call.observe(Final(input_tokens=100_000, output_tokens=3, done_reason="stop"))
    span = meter.close(call)
    assert (span.input_tokens, span.token_source) == (100_000, "reported")
