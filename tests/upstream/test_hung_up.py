"""A server that takes the connection and closes it before a byte of an answer was reached:
both transports said "cannot reach Ollama ... is it running?" of it."""

from __future__ import annotations

import asyncio
import json

import pytest

from ollama_meter.errors import UpstreamConnectionError
from ollama_meter.testing import Fault, OllamaEmulator
from ollama_meter.upstream import CircuitBreaker, PooledUpstream, RetryPolicy, Upstream

CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
BODY = json.dumps({**CHAT, "stream": False}).encode()


def _pooled(url: str) -> BaseException:
    async def run() -> BaseException:
        pool = PooledUpstream(
            url, timeout=30, retry=RetryPolicy(retries=0), breaker=CircuitBreaker(url)
        )
        try:
            with pytest.raises(UpstreamConnectionError) as failed:
                await pool.send(pool.attempts("llama3.1:8b"), "/api/chat", body=BODY)
            return failed.value
        finally:
            await pool.aclose()

    return asyncio.run(run())


def _sdk(url: str) -> BaseException:
    upstream = Upstream(url, retry=RetryPolicy(retries=0), breaker=CircuitBreaker(url))
    with pytest.raises(UpstreamConnectionError) as failed:
        upstream.call("chat", CHAT)
    upstream.close()
    return failed.value


@pytest.mark.parametrize("transport", [_sdk, _pooled], ids=["sdk", "gateway"])
def test_a_server_that_hung_up_without_answering_is_not_said_unreachable(
    transport: object,
) -> None:
    with OllamaEmulator() as emulator:
        emulator.inject(Fault.DROP)
        said = str(transport(emulator.url))  # type: ignore[operator]
    assert "is it running" not in said and "cannot reach" not in said, said
    assert said.startswith(f"Ollama at {emulator.url} closed the connection without answering ("), (
        said
    )
