"""An ``https://`` address of an Ollama that speaks plain HTTP: the TLS handshake gets an
HTTP answer back. It said "cannot reach Ollama ... is it running?" (it is running, and
answered), hiding the cause; the one classifier now says it, for the CLI, the Python API
and the gateway alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ollama_meter import MeteredClient
from ollama_meter.errors import UpstreamConnectionError
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}


def _said(emulator: OllamaEmulator) -> tuple[str, str]:
    tls = emulator.url.replace("http://", "https://")
    host = tls.removeprefix("https://")
    return tls, (
        f"the server at {host} answered plain HTTP to a TLS connection: use "
        f"http://{host}, not https://"
    )


def test_the_python_api_says_the_server_speaks_plain_http(
    emulator: OllamaEmulator, sqlite_url: str
) -> None:
    tls, said = _said(emulator)
    with MeteredClient(host=tls, db_url=sqlite_url) as client:
        with pytest.raises(UpstreamConnectionError) as caught:
            client.chat(**CHAT)
    assert str(caught.value) == said
    assert "is it running" not in str(caught.value)


def test_chat_says_the_server_speaks_plain_http(
    cli: Any, emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls, said = _said(emulator)
    monkeypatch.setenv("OLLAMA_HOST", tls)
    done = cli("chat", "-m", "llama3.1:8b", "hi", "--db", sqlite_url)
    assert (done.code, done.stderr) == (1, f"error: {said}\n")


def test_the_gateway_says_the_server_speaks_plain_http(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    tls, said = _said(emulator)
    gw = app_on(tls, sqlite_url)
    answer = gw.client.post("/api/chat", json=CHAT)
    assert answer.status_code == 502
    assert answer.json() == {"error": said}
