"""OpenAI's embeddings through the gateway, as the official client asks for them.

The official client asks for ``encoding_format: base64`` unless told otherwise, and decodes
the vectors itself; ``dimensions`` cuts them. Ollama honours both (its ``EmbedWriter`` writes
each vector's float32s, little-endian, in base64; the embed handler cuts and normalises
again) and refuses any other format. The emulator wrote numbers whatever was asked, and the
model's whole vector: the client's default path, and a cut, went untested.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx
import openai
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator, expected_embedding
from ollama_meter.testing._models import count_tokens
from tests.gateway.conftest import Gateway

MODEL = "nomic-embed-text"
TEXTS = ["why is the sky blue", "because of Rayleigh scattering"]


def _float32(vector: list[float] | str) -> list[float]:
    """A vector's float32s: decoded from base64 (the client leaves it so when asked for it)."""
    if isinstance(vector, str):
        data = base64.b64decode(vector)
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
@pytest.mark.parametrize("dimensions", [None, 8])
def test_the_official_client_gets_the_vectors_asked_for_and_one_exact_span(
    gateway: Gateway, encoding: str | None, dimensions: int | None
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    asked: dict[str, Any] = {} if encoding is None else {"encoding_format": encoding}
    if dimensions is not None:
        asked["dimensions"] = dimensions
    answer = client.embeddings.create(model=MODEL, input=TEXTS, **asked)
    expected = [_float32(expected_embedding(MODEL, t, dimensions=dimensions)) for t in TEXTS]
    assert [_float32(d.embedding) for d in answer.data] == expected  # type: ignore[arg-type]
    tokens = sum(count_tokens(t) for t in TEXTS)
    assert answer.usage.prompt_tokens == tokens
    gateway.settle()
    (span,) = gateway.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.input_tokens, span.output_tokens, span.token_source) == (
        "ok",
        tokens,
        0,
        "reported",
    )


def test_base64_is_each_vectors_float32s_little_endian(emulator: OllamaEmulator) -> None:
    body = {"model": MODEL, "input": TEXTS[0], "encoding_format": "BASE64"}
    (item,) = httpx.post(f"{emulator.url}/v1/embeddings", json=body, timeout=10).json()["data"]
    vector = expected_embedding(MODEL, TEXTS[0])
    assert base64.b64decode(item["embedding"]) == struct.pack(f"<{len(vector)}f", *vector)


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        ("int8", "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64']."),
        ("", None),  # Ollama's default: numbers
    ],
)  # fmt: skip
def test_another_format_is_ollamas_400_through_the_gateway_and_a_span(
    gateway: Gateway, encoding: str, message: str | None
) -> None:
    body = {"model": MODEL, "input": TEXTS, "encoding_format": encoding}
    reply = gateway.client.post("/v1/embeddings", json=body)
    gateway.settle()
    (span,) = gateway.ledger.latest(SpanFilter(), 10)
    if message is None:
        assert isinstance(reply.json()["data"][0]["embedding"], list)
        assert (reply.status_code, span.status) == (200, "ok")
        return
    assert (reply.status_code, reply.json()["error"]["message"]) == (400, message)
    assert (span.status, span.http_status, span.error_type) == ("error", 400, "bad_request")
