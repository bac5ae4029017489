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


@pytest.mark.parametrize("no_proxy", [None, "ollama.invalid"])
def test_chat_goes_through_the_environments_proxy(  # type: ignore[no-untyped-def]
    cli,
    db: str,
    emulator: OllamaEmulator,
    proxy: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str | None,
) -> None:
    """To an Ollama elsewhere (a name only the proxy, an emulator answering as Ollama,
    reaches); one that ``NO_PROXY`` names is called straight, and cannot be reached here."""
    far = "http://ollama.invalid:11434"
    monkeypatch.setenv("OLLAMA_HOST", far)
    if no_proxy is not None:
        monkeypatch.setenv("NO_PROXY", no_proxy)
    result = cli("chat", "-m", "llama3.1:8b", "hello there friend")
    if no_proxy:
        assert result.code != 0 and "ollama.invalid" in result.stderr
        assert proxy.requests == []
    else:
        assert result.code == 0, result.stderr
        assert [r.target for r in proxy.requests_to("/api/chat")] == [f"{far}/api/chat"]
    assert emulator.requests_to("/api/chat") == []


def test_chat_calls_an_ollama_on_this_machine_straight(  # type: ignore[no-untyped-def]
    cli, db: str, emulator: OllamaEmulator, proxy: OllamaEmulator
) -> None:
    """A proxy would reach its own loopback, not this machine's (``tests/test_client_env_proxy.py``)."""
    result = cli("chat", "-m", "llama3.1:8b", "hello there friend")
    assert result.code == 0, result.stderr
    assert [r.target for r in emulator.requests_to("/api/chat")] == ["/api/chat"]
    assert proxy.requests == []
