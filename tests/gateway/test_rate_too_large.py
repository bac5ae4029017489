"""A prompt larger than a whole minute of its tpm: a final answer, never a 429 to retry.

Clients retry a 429 (the OpenAI and Anthropic SDKs, twice by default, after its
``Retry-After``; many wrappers forever): a call no wait would let in was retried for
nothing, every minute. It is refused with 413, which no client retries, on every route,
streamed or not, in the route's error format, saying the size, the limit and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import ollama
import openai
import pytest

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import Limit
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

LLAMA = "llama3.1:8b"
HR = {"X-Ometer-Department": "hr"}
BIG = "y" * 8_000  # about 2,000 tokens, four characters a token
SAID = (
    "this call's prompt is about 2,000 tokens, more than default/hr's limit of 1,000 tokens "
    "a minute, so no wait would let it in: shorten it, or raise the limit (`ometer limit set`)"
)

BODIES: dict[str, dict[str, Any]] = {
    "/api/chat": {"messages": [{"role": "user", "content": BIG}]},
    "/api/generate": {"prompt": BIG},
    "/api/embed": {"input": BIG},
    "/api/embeddings": {"prompt": BIG},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": BIG}]},
    "/v1/completions": {"prompt": BIG},
    "/v1/embeddings": {"input": BIG},
    "/v1/responses": {"input": BIG},
    "/v1/messages": {"max_tokens": 16, "messages": [{"role": "user", "content": BIG}]},
}
STREAMS = {"/api/embed", "/api/embeddings", "/v1/embeddings"}  # no stream field


def _message(path: str, body: dict[str, Any]) -> str:
    if path == "/v1/messages":
        assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
        return str(body["error"]["message"])
    if path.startswith("/v1/"):
        error = body["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
        return str(error["message"])
    return str(body["error"])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", list(BODIES))
def test_a_prompt_no_wait_lets_in_is_a_final_413_on_every_route(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    path: str,
    stream: bool,
) -> None:
    if stream and path in STREAMS:
        pytest.skip("an embedding does not stream")
    Ledger(sqlite_url).set_limit(Limit("default", "hr", tpm=1_000))
    gw = app_on(emulator.url, sqlite_url)  # reads the limits before it serves
    body = {"model": LLAMA, **BODIES[path], **({"stream": True} if stream else {})}
    before = len(emulator.requests)
    reply = gw.client.post(path, json=body, headers=HR)
    assert reply.status_code == 413, reply.text
    assert "retry-after" not in reply.headers  # no wait would let it in: nothing to wait for
    assert _message(path, reply.json()) == SAID
    assert len(emulator.requests) == before
    span = gw.ledger.latest(SpanFilter(), 1)[0]
    assert (span.status, span.error_type, span.http_status) == ("rejected", "rate_limited", 413)


def test_the_official_clients_take_it_as_final_and_do_not_retry(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Each client calls once: one refusal span each, not the three of two retries."""
    Ledger(sqlite_url).set_limit(Limit("default", "hr", tpm=1_000))
    gw = serve_on(emulator.url, sqlite_url)
    user = [{"role": "user", "content": BIG}]
    with pytest.raises(ollama.ResponseError) as native:
        ollama.Client(host=gw.url, headers=HR).chat(model=LLAMA, messages=user)
    assert native.value.status_code == 413 and "no wait would let it in" in native.value.error
    with pytest.raises(openai.APIStatusError) as oai:
        openai.OpenAI(
            base_url=f"{gw.url}/v1", api_key="x", max_retries=2, default_headers=HR
        ).chat.completions.create(model=LLAMA, messages=user)  # type: ignore[arg-type]
    assert oai.value.status_code == 413 and oai.value.body["message"] == SAID  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as claude:
        anthropic.Anthropic(
            base_url=gw.url, api_key="x", max_retries=2, default_headers=HR
        ).messages.create(model=LLAMA, max_tokens=16, messages=user)  # type: ignore[arg-type]
    assert claude.value.status_code == 413 and SAID in claude.value.message
    refused = [s for s in gw.ledger.latest(SpanFilter(), 100) if s.http_status == 413]
    assert len(refused) == 3
