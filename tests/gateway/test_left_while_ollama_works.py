"""A caller who hangs up while Ollama evaluates the call, before any byte of its answer.

The gateway charged such a call nothing, said to be ``reported``: Ollama had the whole
request and worked on it. Now its prompt is charged, estimated, as the Python API and
``ometer chat`` charge a call stopped then, and as a stream left after its first chunk is."""

from __future__ import annotations

import time

import httpx
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "say hi to the team"}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_caller_gone_while_ollama_works_is_charged_the_prompt(
    sqlite_gateway: Gateway, emulator: OllamaEmulator, stream: bool
) -> None:
    gateway = sqlite_gateway
    gateway.ledger.add_price_rule(token_prices())
    emulator.latency = 5.0
    body = {"model": "llama3.1:8b", "messages": HI, "stream": stream}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/api/chat", json=body, timeout=0.5)
    deadline = time.monotonic() + 10
    while not gateway.ledger.latest(SpanFilter(), 5):
        assert time.monotonic() < deadline, "no span written"
        time.sleep(0.05)
    emulator.hurry()
    (span,) = gateway.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.output_tokens, span.token_source) == ("client_abort", 0, "estimated")
    assert span.input_tokens > 0 and span.cost_total == span.input_tokens * 1000
