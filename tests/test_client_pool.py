"""A client whose every connection to Ollama is held by streams its program read part-way and
kept: the next call waits for a connection (``timeout=``'s ``pool``), and what it raises then
is the program's own trouble, not Ollama's: said so, sent to nobody, tried once, counted by no
circuit breaker (three such calls opened the model's circuit, and the client refused every call
of the model for a minute once the streams were let go, Ollama healthy all along)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import ollama
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, MeteredClient, UpstreamTimeout
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator, expected_reply
from tests.factories import token_prices

HI = [{"role": "user", "content": "say hi to the team"}]
HELD = 2
"""The connections the client may open (``limits=``), all held by unfinished streams."""
PATIENCE = httpx.Timeout(60.0, pool=0.05)
"""Only the wait for a free connection is short: it always runs out (none comes free)."""

CALLS: dict[str, dict[str, Any]] = {
    "chat": {"model": "llama3.1:8b", "messages": HI},
    "generate": {"model": "llama3.1:8b", "prompt": "hi"},
    "embed": {"model": "nomic-embed-text", "input": "hi"},
}


def _fails(call: Any, **arguments: Any) -> BaseException:
    try:
        answer = call(**arguments)
        for _ in answer if arguments.get("stream") else ():
            pass
    except Exception as exc:
        return exc
    raise AssertionError("the call got a connection")


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    waiting=st.lists(
        st.tuples(st.sampled_from(sorted(CALLS)), st.booleans()), min_size=3, max_size=4
    ),
)
def test_calls_waiting_on_a_pool_held_by_unfinished_streams_are_the_programs_trouble(
    sqlite_url: str, emulator: OllamaEmulator, waiting: list[tuple[str, bool]]
) -> None:
    emulator.reset()
    limits = httpx.Limits(max_connections=HELD)
    with MeteredClient(
        emulator.url, db_url=sqlite_url, timeout=PATIENCE, limits=limits, department="sales"
    ) as client:
        client.meter.ledger.add_price_rule(token_prices())
        before = client.meter.ledger.count()
        held = [client.chat(model="llama3.1:8b", messages=HI, stream=True) for _ in range(HELD)]
        for stream in held:
            next(stream)
        sent = len(emulator.calls)
        for operation, stream in waiting:
            streamed = {"stream": True} if operation != "embed" and stream else {}
            arguments = {**CALLS[operation], **streamed}
            failure = _fails(getattr(client, operation), **arguments)
            # caught as the ollama client's is (httpx's PoolTimeout), and as ometer's timeout
            assert isinstance(failure, httpx.PoolTimeout) and isinstance(failure, UpstreamTimeout)
            assert isinstance(failure, TimeoutError)
            assert str(failure) == (
                f"every connection this client may open to Ollama at {emulator.url} is in use "
                "(streams read part-way and not closed hold theirs) and none came free in time; "
                "nothing was sent: read those streams to the end or close() them, or allow more "
                "connections with limits=httpx.Limits(max_connections=...)"
            )
        assert len(emulator.calls) == sent  # never retried into a free connection: none sent
        for stream in held:
            stream.close()
        # Ollama is healthy: no circuit was opened by the program's own wait
        answer = client.chat(model="llama3.1:8b", messages=HI)
        assert answer.meter is not None
        spans = client.meter.ledger.latest(SpanFilter(), 100)[: len(waiting) + HELD + 1]
    assert client.meter.ledger.count() - before == len(waiting) + HELD + 1
    reply = expected_reply("llama3.1:8b", HI)
    micros = reply.prompt_tokens * 1000 + reply.output_tokens * 2000  # token_prices()
    failed, aborted = spans[1 : 1 + len(waiting)], spans[1 + len(waiting) :]  # newest first
    assert (spans[0].status, spans[0].input_tokens, spans[0].output_tokens) == (
        "ok",
        reply.prompt_tokens,
        reply.output_tokens,
    )
    assert spans[0].cost_total == micros
    assert [(s.status, s.error_type, s.input_tokens, s.output_tokens, s.cost_total) for s in failed] == [
        ("error", "timeout", 0, 0, 0)
    ] * len(waiting)  # fmt: skip
    for s in aborted:  # each charged what Ollama had sent of it, as any stream left unfinished
        assert (s.status, s.input_tokens) == ("client_abort", reply.prompt_tokens)
        assert 0 < s.output_tokens < reply.output_tokens
        assert s.cost_total == reply.prompt_tokens * 1000 + s.output_tokens * 2000


def test_the_async_client_says_the_same_of_its_pool(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    async def run() -> tuple[list[BaseException], str]:
        limits = httpx.Limits(max_connections=HELD)
        async with AsyncMeteredClient(
            emulator.url, db_url=sqlite_url, timeout=PATIENCE, limits=limits
        ) as client:
            held = [
                await client.chat(model="llama3.1:8b", messages=HI, stream=True)
                for _ in range(HELD)
            ]
            for stream in held:
                await anext(stream)
            failures = []
            for _ in range(3):
                try:
                    await client.generate(model="llama3.1:8b", prompt="hi")
                except Exception as exc:
                    failures.append(exc)
            for stream in held:
                await stream.aclose()
            answer = await client.generate(model="llama3.1:8b", prompt="hi")
            return failures, answer.response

    failures, reply = asyncio.run(run())
    assert reply == expected_reply("llama3.1:8b", prompt="hi").content
    assert len(failures) == 3
    assert all(
        isinstance(f, httpx.PoolTimeout) and isinstance(f, UpstreamTimeout) for f in failures
    )
    assert all(not isinstance(f, ollama.ResponseError) for f in failures)
    assert all(str(f).startswith("every connection this client may open") for f in failures)
