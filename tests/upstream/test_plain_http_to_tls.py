"""An ``https://`` address of an Ollama that speaks plain HTTP: the TLS handshake gets an
HTTP answer back. It said "cannot reach Ollama ... is it running?" (it is running, and
answered), hiding the cause; the one classifier now says it, for the CLI, the Python API
and the gateway alike."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import pytest

from ollama_meter import MeteredClient
from ollama_meter.errors import UpstreamConnectionError
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream._classify import no_connection
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


@pytest.mark.parametrize(
    ("said", "plain"),
    [
        ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)", True),
        ("[SSL: RECORD_LAYER_FAILURE] record layer failure (_ssl.c:1000)", True),  # OpenSSL 3.2+
        ("[SSL: HTTP_REQUEST] http request (_ssl.c:1000)", True),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed (_ssl.c:1006)", False),
        ("EOF occurred in violation of protocol (_ssl.c:1006)", False),
    ],
)
def test_only_a_handshake_answered_in_plain_http_is_said_to_be_one(said: str, plain: bool) -> None:
    """Each OpenSSL's words for it; a certificate it refused, or a server that hung up, is
    not a plain-HTTP server and keeps the message it had."""
    exc = ConnectionError("Failed to connect to Ollama.")
    exc.__cause__ = ssl.SSLError(1, said)  # as the ollama client raises it, from httpx's
    error = no_connection(exc, host="https://gpu1:11434")
    # an http:// address spoke no TLS: whatever the chain holds, it is no such mismatch
    assert "plain HTTP" not in str(no_connection(exc, host="http://gpu1:11434"))
    assert isinstance(error, UpstreamConnectionError)
    assert str(error).startswith("the server at gpu1:11434 answered plain HTTP") is plain, error
