"""A call the official OpenAI or Anthropic client sends through the gateway is one call, however
Ollama fails it.

The gateway retries its upstream itself, within the call's one span (DESIGN §10: a call counts
once however often it was retried). Both official clients send an answer of 408, 409, 429 or
5xx again, twice by default, unless it says ``x-should-retry: false``. Ollama's 500 or 503,
relayed after the gateway's own three tries, or its 502 for an Ollama it cannot reach, said
nothing of the kind: one ``chat.completions.create`` was three ``error`` spans and nine
requests to Ollama, and its three failed calls opened the model's circuit to its caller for a
minute (found by hand: the caller's next call was refused with a 503 and never sent). An ometer
client already takes such an answer as final (``UpstreamError.recorded``); the official
clients are now told so. A refusal that says when to try again (``Retry-After``, within a
minute) still leaves them their retry.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hello"}]
MODEL = "llama3.1:8b"
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
ERRORS = {"openai": openai.APIStatusError, "anthropic": anthropic.APIStatusError}


def _call(sdk: str, gw: Gateway, *, stream: bool, **client: Any) -> None:
    """One call by the official client, with its own retry policy (two retries) unless told."""
    if sdk == "openai":
        chats = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", **client).chat.completions
        answer: Any = chats.create(model=MODEL, messages=HI, max_tokens=20, stream=stream)  # type: ignore[arg-type]
    else:
        messages = anthropic.Anthropic(base_url=gw.url, api_key="x", **client).messages
        answer = messages.create(model=MODEL, max_tokens=20, messages=HI, stream=stream)  # type: ignore[arg-type]
    if stream:
        list(answer)


def _spans(gw: Gateway) -> list[tuple[str, int | None, str | None]]:
    gw.settle()
    return [(s.status, s.http_status, s.error_type) for s in gw.ledger.latest(SpanFilter(), 10)]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("fault", "status"), [(Fault.HTTP_500, 500), (Fault.HTTP_503, 503)])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_ollamas_failure_relayed_is_one_span_and_the_gateways_tries_alone(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    sdk: str,
    fault: Fault,
    status: int,
    stream: bool,
) -> None:
    gw = serve_on(emulator.url, sqlite_url, config={"retry_backoff": 0.01})
    emulator.inject(fault, times=100)
    with pytest.raises(ERRORS[sdk]) as failed:
        _call(sdk, gw, stream=stream)
    assert failed.value.status_code == status
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert _spans(gw) == [("error", status, "upstream_5xx")]
    assert len(emulator.requests_to(PATHS[sdk])) == 3  # the gateway's call and its two retries
    emulator.clear_faults()
    _call(sdk, gw, stream=stream, max_retries=0)  # one failed call opens no circuit
    assert [s[0] for s in _spans(gw)] == ["ok", "error"]


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_an_ollama_the_gateway_cannot_reach_is_one_span_per_call(
    serve_on: Callable[..., Gateway], sqlite_url: str, sdk: str
) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gw = serve_on(f"http://127.0.0.1:{port}", sqlite_url, config={"retry_backoff": 0.01})
    with pytest.raises(ERRORS[sdk]) as failed:
        _call(sdk, gw, stream=False)
    assert failed.value.status_code == 502
    assert _spans(gw) == [("error", 502, "connection")]
