"""A hard budget's refusal says what the caller can change: for a call that has no reply (an
embedding) that is its input alone.

An embedding over its budget was told to "set a smaller reply cap (num_predict, max_tokens,
max_output_tokens) or a shorter prompt": no embedding has a reply cap, and the first half sent
a batch job looking for an option that does not exist.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from ollama_meter.budgets import Budget
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway
from tests.gateway.test_lying_picture_counts import png, with_pictures

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
CHAT = {"model": "llama3.1:8b", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
PICTURE = base64.b64encode(png(640, 480)).decode()


@pytest.mark.parametrize(
    ("path", "body", "hint"),
    [
        ("/api/embed", {"model": "llama3.1:8b", "input": ["x" * 2000] * 5}, "input"),
        ("/v1/embeddings", {"model": "llama3.1:8b", "input": "x" * 10_000}, "input"),
        ("/api/chat", CHAT, "reply"),
        ("/api/chat", {**with_pictures("chat", [png(640, 480)]), "stream": False}, "picture"),
        ("/api/generate", with_pictures("generate", [png(640, 480)] * 2), "picture"),
        (
            "/api/embed",
            {"model": "llama3.1:8b", "input": ["x" * 2000] * 5, "images": [PICTURE]},
            "input",
        ),
    ],
)
def test_a_refusal_names_what_the_call_can_change(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    path: str,
    body: dict[str, object],
    hint: str,
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1000 USD per 1M input tokens
    gw.ledger.save_budget(Budget("acme", "sales", "day", 1_000_000, "USD"))  # 1 USD
    refused = gw.client.post(path, json=body, headers=SALES)
    assert refused.status_code == 429, refused.text
    said = str(refused.json()["error"])
    if hint == "input":
        assert "reply cap" not in said and "num_predict" not in said, said
        assert "; send less input (a shorter prompt, fewer or shorter texts) to fit;" in said
    else:
        assert "; set a smaller reply cap (num_predict, max_tokens, max_output_tokens)" in said
    # Pictures are the most of such a call's bound (4,096 tokens each, a whole budget here): a
    # caller told only of its prompt and reply cap looked at the wrong knob.
    assert ("fewer or smaller pictures" in said) is (hint == "picture"), said
