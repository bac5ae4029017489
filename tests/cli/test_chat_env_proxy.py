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


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        (
            "HTTP_PROXY",
            "ftp://ops:s3cret@gate.corp:21",
            "HTTP_PROXY is not a proxy httpx can use (ftp://)",
        ),
        ("ALL_PROXY", "socks5://ops:s3cret@gate.corp:1080", "ALL_PROXY is a SOCKS proxy"),
        (
            "https_proxy",
            "gopher://gate.corp",
            "HTTPS_PROXY is not a proxy httpx can use (gopher://)",
        ),
        ("HTTP_PROXY", "\x1b[31mx://gate", "HTTP_PROXY is not a proxy httpx can use: give"),
    ],
)
def test_a_proxy_httpx_cannot_use_is_a_setting_named_not_a_bug(  # type: ignore[no-untyped-def]
    cli,
    db: str,
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    said: str,
) -> None:
    """The ``ollama`` client makes a client as it is imported, which reads these: ``ometer
    chat`` said "unexpected ImportError ... This is a bug in ometer" (a SOCKS proxy with no
    socksio installed) or "unexpected ValueError" (a scheme httpx has no transport for)."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    result = cli("chat", "-m", "llama3.1:8b", "hello there friend")
    assert result.code == 2 and result.stderr.startswith(f"error: {said}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "s3cret" not in result.stderr
    assert emulator.requests == []
    monkeypatch.setenv("NO_PROXY", "*")  # no proxy read at all: nothing in the way
    assert cli("chat", "-m", "llama3.1:8b", "hello there friend").code == 0
