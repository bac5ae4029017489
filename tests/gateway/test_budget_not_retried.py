"""A hard budget's refusal through the gateway is final for the official clients until its period
ends: they raise it at once, and do not sleep until the next day or month to send it again.

The Anthropic client retries a 429 twice, waiting whatever ``Retry-After`` says, unless the
answer says ``x-should-retry: false`` (as the OpenAI client reads it too). A budget's
``Retry-After`` is the time until its period ends: the Anthropic client slept on it (found by
hand: a ``messages.create`` against a spent daily budget at 23:44 CET hung 932 s before its
first retry; against a monthly one here it would sleep 2,164,455 s, twice, and leave three
``rejected`` spans). The OpenAI client already raised at once; it is held to that too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.budgets._refusals import IN_FLIGHT_RETRY_AFTER
from ollama_meter.errors import UpstreamServerError
from ollama_meter.gateway._answers import CLIENT_WAIT_S, budget_retry, refusal_response
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream import OLLAMA, Refusal, retry_after_seconds
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
HI = [{"role": "user", "content": "hello"}]


def _openai(gw: Gateway) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key="x", http_client=gw.client, default_headers=SALES
    )
    client.chat.completions.create(model="llama3.1:8b", messages=HI, max_tokens=50)  # type: ignore[arg-type]


def _anthropic(gw: Gateway) -> None:
    client = anthropic.Anthropic(
        base_url=gw.url, api_key="x", http_client=gw.client, default_headers=SALES
    )
    client.messages.create(model="llama3.1:8b", max_tokens=50, messages=HI)  # type: ignore[arg-type]


@pytest.mark.parametrize("call", [_openai, _anthropic], ids=["openai", "anthropic"])
def test_an_sdk_refused_by_a_spent_budget_raises_at_once_and_sends_it_once(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    call: Callable[[Gateway], None],
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(Budget("acme", "sales", "month", 1, "USD"))  # a micro-dollar a month
    slept: list[float] = []
    real_sleep, caller = time.sleep, threading.current_thread()

    def sleep(seconds: float) -> Any:  # the client's waits to retry, in the calling thread
        if threading.current_thread() is not caller:
            return real_sleep(seconds)
        slept.append(seconds)
        return None

    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)) as raised:
        call(gw)
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert int(raised.value.response.headers["retry-after"]) > 0  # when the period ends, still
    assert slept == []
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.status, s.error_type) for s in spans] == [("rejected", "budget_exceeded")]
    assert not emulator.calls


def test_a_gateway_in_front_passes_the_refusals_word_on(
    app_on: Callable[..., Gateway],
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    """``ometer run`` in front of ``ometer serve`` passes the inner gateway's refusal on as it
    came; the word not to retry it goes with it."""
    inner = serve_on(emulator.url, sqlite_url)
    inner.ledger.add_price_rule(token_prices())
    inner.ledger.save_budget(Budget("acme", "sales", "month", 1, "USD"))
    outer = app_on(inner.url, f"sqlite:///{tmp_path / 'outer.db'}")
    body = {"model": "llama3.1:8b", "max_tokens": 50, "messages": HI}
    answer = outer.client.post("/v1/messages", json=body, headers=SALES)
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["type"] == "billing_error"
    assert answer.headers["x-should-retry"] == "false"


def test_a_refusal_a_retry_may_pass_soon_leaves_the_client_its_retry() -> None:
    """Room that calls in flight hold comes back within seconds (``Retry-After`` 5 at most), as
    does a period that ends within as long: those the clients may send again."""
    assert budget_retry(None) == budget_retry(1) == budget_retry(IN_FLIGHT_RETRY_AFTER) == {}
    assert budget_retry(IN_FLIGHT_RETRY_AFTER + 1) == {"x-should-retry": "false"}


@settings(max_examples=60)
@given(
    wait=st.one_of(
        st.integers(min_value=0, max_value=10**400).map(str),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    )
)
@example(wait=format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True))
@example(wait=format_datetime(datetime(2001, 1, 1, tzinfo=UTC), usegmt=True))
@example(wait="60")
@example(wait="61")
def test_an_upstreams_wait_passed_on_is_final_for_clients_past_a_minute(wait: str) -> None:
    """Ollama's 429 or 503 (or a gateway's behind this one) goes to the caller as it came: with
    a ``Retry-After`` longer than a client may sleep on (a minute), it says not to retry."""
    said = Refusal(UpstreamServerError("busy"), 503, b'{"error":"busy"}', None, wait or None)
    answer = refusal_response(OLLAMA, said)
    seconds = retry_after_seconds(wait)
    final = seconds is not None and seconds > CLIENT_WAIT_S
    assert answer.headers.get("x-should-retry") == ("false" if final else None)
    assert answer.headers.get("retry-after") == (wait or None)
