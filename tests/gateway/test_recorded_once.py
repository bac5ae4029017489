"""An ometer client calling through an ometer gateway on the same ledger: one call, one span.

The gateway always records what passes through it (a caller's word never spares it a span);
the client, told by the answer that the gateway recorded the call in the client's own ledger,
leaves the record to it: no second span, no second charge to a budget, none in the metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.pricing import from_micros
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]
LEDGER_HEADER = "X-Ometer-Ledger"


def _call(client: MeteredClient, operation: str, stream: bool) -> Any:
    if operation == "chat":
        answer = client.chat("llama3.1:8b", HI, stream=stream)
    else:
        answer = client.generate("llama3.1:8b", "hi", stream=stream)
    return list(answer)[-1] if stream else answer


async def _acall(client: AsyncMeteredClient, operation: str, stream: bool) -> Any:
    if operation == "chat":
        answer = await client.chat("llama3.1:8b", HI, stream=stream)
    else:
        answer = await client.generate("llama3.1:8b", "hi", stream=stream)
    if not stream:
        return answer
    return [part async for part in answer][-1]


@pytest.mark.parametrize("operation", ["chat", "generate"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_client_through_a_gateway_on_its_ledger_leaves_one_span(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    operation: str,
    stream: bool,
    driver: str,
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    who = {"tenant": "acme", "department": "sales", "user": "ann", "db_url": sqlite_url}
    if driver == "sync":
        with MeteredClient(gw.url, **who) as client:
            last = _call(client, operation, stream)
    else:

        async def go() -> Any:
            async with AsyncMeteredClient(gw.url, **who) as client:
                return await _acall(client, operation, stream)

        last = asyncio.run(go())
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.tenant, s.department, s.user) for s in spans] == [
        ("gateway", "acme", "sales", "ann")
    ]
    (span,) = spans
    assert span.cost_total > 0 and span.status == "ok"
    # The client names the gateway's span: the call's one record.
    assert last.meter.id == span.id
    assert last.meter.recorded_by == gw.url
    assert last.meter.cost == from_micros(span.cost_total)


def test_a_gateway_names_its_ledger_on_every_metered_answer(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    answers = [
        gw.client.post("/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}),
        gw.client.post("/api/generate", json={"model": "llama3.1:8b", "prompt": "hi"}),
        gw.client.post(
            "/v1/chat/completions", json={"model": "llama3.1:8b", "messages": HI, "stream": True}
        ),
        gw.client.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "hi"}),
    ]
    names = {answer.headers.get(LEDGER_HEADER) for answer in answers}
    assert [answer.status_code for answer in answers] == [200] * 4
    (name,) = names
    assert name and len(name) >= 32  # unguessable
    assert gw.ledger.identity() == name
    # Another ledger has another name.
    assert httpx.get(f"{gw.url}/api/tags").headers.get(LEDGER_HEADER) is None
