"""The gateway calls its upstreams straight: a proxy in the environment, meant for the web, is
never on the way to the Ollama servers beside it (the README says so, under "The gateway")."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ollama_meter.testing import OllamaEmulator, unreachable_url
from tests.gateway.conftest import Gateway

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.mark.parametrize("case", [str.upper, str.lower])
def test_a_proxy_in_the_environment_is_not_on_the_way_to_ollama(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    case: Callable[[str], str],
) -> None:
    for name in (*PROXY_VARIABLES, "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(case(name), unreachable_url())
    gw = app_on(emulator.url, sqlite_url)
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
    reply = gw.client.post("/api/chat", json={**body, "stream": False})
    assert reply.status_code == 200, reply.text
    assert gw.client.get("/api/tags").status_code == 200
    assert [request.path for request in emulator.requests] == ["/api/chat", "/api/tags"]
