"""``ometer chat`` calls Ollama through a proxy in the environment, as the Python API does
(``tests/test_client_env_proxy.py``): main sent its calls straight to Ollama, past it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ollama_meter.testing import OllamaEmulator

_VARIABLES = [
    f"{name}{end}" for name in ("http", "https", "all", "no") for end in ("_proxy", "_PROXY")
]


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[OllamaEmulator]:
    """A second emulator, the environment's HTTP proxy, answering what comes through it."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with OllamaEmulator() as emu:
        monkeypatch.setenv("HTTP_PROXY", emu.url)
        yield emu


@pytest.mark.parametrize("no_proxy", [None, "127.0.0.1"])
def test_chat_goes_through_the_environments_proxy(  # type: ignore[no-untyped-def]
    cli,
    db: str,
    emulator: OllamaEmulator,
    proxy: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str | None,
) -> None:
    if no_proxy is not None:
        monkeypatch.setenv("NO_PROXY", no_proxy)
    result = cli("chat", "-m", "llama3.1:8b", "hello there friend")
    assert result.code == 0, result.stderr
    through, past = (emulator, proxy) if no_proxy else (proxy, emulator)
    assert [r.target for r in through.requests_to("/api/chat")] == [
        "/api/chat" if no_proxy else f"{emulator.url}/api/chat"
    ]
    assert past.requests_to("/api/chat") == []
