"""Gateway keys and the admin token, tried as an attacker would, in process.

A credential is the caller's to the gateway: it never travels on to Ollama, whichever header
carries it. A key row someone edited in SQL is either a key as ``ometer keys create`` would
have stored it, or a refusal naming the row; never a 500, never a call charged to a name
the ledger would refuse.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ollama_meter.ledger import Ledger
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

TOKEN = "admin-s3cret"
HI = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.mark.parametrize("require_key", [True, False])
@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key", "X-Ometer-Key"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/chat", HI),
        ("POST", "/v1/chat/completions", HI),
        ("POST", "/v1/messages", {**HI, "max_tokens": 5}),
        ("GET", "/api/tags", None),
        ("POST", "/api/show", {"model": "llama3.1:8b"}),
        ("GET", "/v1/models/llama3.1:8b", None),
    ],
)
def test_a_key_never_travels_on_to_ollama_in_any_header(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    require_key: bool,
    header: str,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    """``X-Api-Key`` (what Anthropic's clients send) reached Ollama with the gateway's key in
    it, on every route: a log or a proxy beside Ollama then held a live key."""
    secret = Ledger(sqlite_url).create_key(name="bot", tenant="acme", department="sales")[1]
    gw = app_on(emulator.url, sqlite_url, require_key=require_key)
    value = f"Bearer {secret}" if header == "Authorization" else secret
    reply = gw.client.request(method, path, json=body, headers={header: value})
    assert reply.status_code == 200, reply.text
    (sent,) = emulator.requests
    assert [name for name, v in sent.headers.items() if secret in v] == []
