"""``embeddings()``, the ``ollama`` client's older call for one vector, metered as ``embed`` is."""

from __future__ import annotations

import asyncio

import ollama

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices


def test_the_older_embeddings_call_is_answered_as_ollamas_and_metered(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """``MeteredClient`` had no ``embeddings``: code written for the ``ollama`` client (and
    LangChain's older Ollama embeddings) failed with an AttributeError."""
    expected = ollama.Client(host=emulator.url).embeddings(model="nomic-embed-text", prompt="hi")
    with MeteredClient(emulator.url, tenant="acme", department="sales", db_url=sqlite_url) as c:
        c.meter.ledger.add_price_rule(token_prices())
        got = c.embeddings(model="nomic-embed-text", prompt="hi", user="bob")

        async def in_async() -> ollama.EmbeddingsResponse:
            async with AsyncMeteredClient(emulator.url, db_url=sqlite_url) as a:
                return await a.embeddings(model="nomic-embed-text", prompt="hi")

        also = asyncio.run(in_async())
        spans = c.meter.ledger.latest(SpanFilter(), 5)
    assert isinstance(got, ollama.EmbeddingsResponse)
    assert got.embedding == expected.embedding == got["embedding"] == also.embedding
    assert got.meter is not None and also.meter is not None  # type: ignore[attr-defined]
    assert [(s.operation, s.status, s.input_tokens, s.output_tokens) for s in spans] == [
        ("embeddings", "ok", 1, 0),
        ("embeddings", "ok", 1, 0),
    ]
    mine = next(s for s in spans if s.id == got.meter.id)
    assert (mine.tenant, mine.department, mine.user, mine.source) == ("acme", "sales", "bob", "sdk")
    assert mine.cost_total == 1000  # one prompt token at 1000 micro-units
    assert [r.body for r in emulator.requests_to("/api/embeddings")][1:] == [
        {"model": "nomic-embed-text", "prompt": "hi"}
    ] * 2
