"""A call the gateway refuses (a rate limit's 429, a hard budget's, a 400) is recorded by the
gateway, as a ``rejected`` or ``error`` span: an ometer client on the same ledger records no
second span of it. The refusal names the ledger as an answer does; before, it did not, and the
client wrote its own span of the call beside the gateway's (one refused call, two spans)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget
from ollama_meter.errors import RateLimited, UpstreamError
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import Limit
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]


def _rate_limited(ledger: Ledger) -> None:
    ledger.set_limit(Limit("default", "sales", rpm=1))


def _over_the_gateways_budget(ledger: Ledger) -> None:
    """The client names no department, so its own gate holds nothing (no budget covers
    default/unassigned); the gateway charges its default, ops, whose budget has no room."""
    ledger.add_price_rule(token_prices())
    ledger.save_budget(Budget("default", "ops", "month", 1, "USD"))


@pytest.mark.parametrize(
    ("setup", "department", "refused_as"),
    [
        (_rate_limited, "sales", ("rejected", "rate_limited", 429)),
        (_over_the_gateways_budget, None, ("rejected", "budget_exceeded", 429)),
    ],
    ids=["rate-limit", "gateway-budget"],
)
def test_a_call_the_gateway_refuses_is_its_one_span(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    setup: Callable[[Ledger], None],
    department: str | None,
    refused_as: tuple[str, str, int],
) -> None:
    setup(Ledger(sqlite_url))
    gw = serve_on(emulator.url, sqlite_url, config={"department": "ops"})
    who = {"db_url": sqlite_url} | ({} if department is None else {"department": department})
    with MeteredClient(gw.url, **who) as client:
        if department is not None:  # the limit's one call a minute
            client.chat("llama3.1:8b", HI)
        with pytest.raises(UpstreamError) as refused:
            client.chat("llama3.1:8b", HI)
    assert isinstance(refused.value, RateLimited)
    gw.settle()
    refusal, *before = gw.ledger.latest(SpanFilter(), 10)  # newest first
    assert (refusal.source, refusal.status, refusal.error_type, refusal.http_status) == (
        "gateway",
        *refused_as,
    )
    assert [s.source for s in before] == ["gateway"] * (department is not None)
