"""A call cut short after Ollama read its prompt is charged its pictures too, estimated.

A caller that hangs up once the first token arrives stops Ollama, and no final chunk says what
the prompt counted: the prompt is estimated from the request. Its texts were, at about four
bytes a token; its pictures were not at all. A classifier over pictures (twenty of them, "yes
or no") that read the first token and hung up had every picture's prompt evaluated, some
hundreds to thousands of tokens each, and was charged for none of them. Each now counts what
a tpm limit counts of one (256 tokens, Gemma 3's), within the call's bound as every estimate.
"""

from __future__ import annotations

import base64
import json

import httpx

from ollama_meter.budgets import IMAGE_TOKENS_SEEN
from ollama_meter.meter._request import facts_of
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway, left_mid_stream

PICTURE = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()


def test_a_caller_that_hangs_up_after_the_first_token_is_charged_its_pictures(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.token_latency = 0.05
    body = {
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "yes or no?", "images": [PICTURE] * 20}],
    }
    try:
        with httpx.Client(base_url=sqlite_gateway.url, timeout=30) as client:
            with client.stream("POST", "/api/chat", content=json.dumps(body).encode()) as reply:
                assert reply.status_code == 200
                next(reply.iter_lines())  # the first token, then the caller leaves
        span = left_mid_stream(sqlite_gateway, emulator)
    finally:
        emulator.token_latency = 0.0
    text = facts_of("chat", {**body, "messages": [{"role": "user", "content": "yes or no?"}]})
    assert span.input_tokens == text.input_estimate() + 20 * IMAGE_TOKENS_SEEN


def test_every_wire_formats_pictures_count_in_the_estimate_within_the_bound() -> None:
    url = f"data:image/png;base64,{PICTURE}"
    openai = [{"type": "image_url", "image_url": {"url": url}}] * 3
    anthropic = [{"type": "image", "source": {"type": "base64", "data": PICTURE}}] * 3
    bodies = {
        "generate": {"prompt": "hi", "images": [PICTURE] * 3},
        "openai.chat": {"messages": [{"role": "user", "content": openai}]},
        "anthropic.messages": {
            "max_tokens": 1,
            "messages": [{"role": "user", "content": anthropic}],
        },
    }
    for operation, body in bodies.items():
        facts = facts_of(operation, {"model": "m", **body})
        assert facts.images == 3, operation
        assert facts.input_estimate() >= 3 * IMAGE_TOKENS_SEEN, operation
        assert facts.input_estimate() <= facts.bound(1).input_tokens, operation
