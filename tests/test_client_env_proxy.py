"""A proxy in the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)
is the way to Ollama as httpx and the ``ollama`` client take it, through ometer's transport.

httpx reads no proxy from the environment for a client given its own transport: every call
went straight to Ollama, past the proxy (a corporate host's only way out). Now the calls
httpx would send through it go through ometer's transport made with that proxy, so a call
lost on a kept-alive connection is still sent again, and one Ollama already has (its body
sent whole, then no answer in time) is still never sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from httpx._utils import get_environment_proxies  # what httpx reads: the map must be its own
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, MeteredClient, UpstreamError
from ollama_meter.testing import Fault, OllamaEmulator
from ollama_meter.upstream._sdk_made import environment_proxies

HI = [{"role": "user", "content": "say hi to the team"}]
FAR = "http://ollama.invalid:11434"
"""Ollama at a name only the proxy (an emulator answering as Ollama) reaches."""
_VARIABLES = [
    f"{name}{end}" for name in ("http", "https", "all", "no") for end in ("_proxy", "_PROXY")
]


@pytest.fixture(scope="module")
def proxy_session() -> Iterator[OllamaEmulator]:
    with OllamaEmulator() as emu:
        yield emu


@pytest.fixture
def proxy(
    proxy_session: OllamaEmulator, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> OllamaEmulator:
    """A second emulator, the environment's HTTP proxy: it answers what comes through it
    (``POST http://127.0.0.1:PORT/api/chat``) as Ollama would, recording it."""
    proxy_session.hurry()
    proxy_session.wait_idle(10)
    proxy_session.reset()
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy_session.url)
    return proxy_session


def _chat(flavour: str, host: str, **kwargs: Any) -> Any:
    def sync() -> Any:
        with MeteredClient(host, **kwargs) as client:
            return client.chat(model="llama3.1:8b", messages=HI)

    async def run() -> Any:
        async with AsyncMeteredClient(host, **kwargs) as client:
            return await client.chat(model="llama3.1:8b", messages=HI)

    return sync() if flavour == "sync" else asyncio.run(run())


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_proxy_given_is_the_way_to_ollama(
    sqlite_url: str, emulator: OllamaEmulator, flavour: str
) -> None:
    """``proxy=`` reaches the transport ometer sends through (on the client, httpx would have
    sent the calls past it): the request goes to the proxy, for Ollama's address (the
    emulator, as the proxy, answers it as Ollama)."""
    reply = _chat(flavour, FAR, db_url=sqlite_url, proxy=emulator.url, retries=0)
    assert reply.meter is not None and reply.meter.status == "ok"
    assert [(r.path, r.target) for r in emulator.requests] == [("/api/chat", f"{FAR}/api/chat")]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_environment_proxy_is_the_way_to_ollama(
    sqlite_url: str, emulator: OllamaEmulator, proxy: OllamaEmulator, flavour: str
) -> None:
    """Main sent the call straight to Ollama, past ``HTTP_PROXY``."""
    reply = _chat(flavour, FAR, db_url=sqlite_url, retries=0)
    assert reply.meter is not None and reply.meter.status == "ok"
    assert emulator.requests_to("/api/chat") == []
    assert [r.target for r in proxy.requests_to("/api/chat")] == [f"{FAR}/api/chat"]


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LocalHost"])
def test_an_ollama_on_this_machine_is_never_called_through_a_proxy(
    sqlite_url: str, emulator: OllamaEmulator, proxy: OllamaEmulator, flavour: str, name: str
) -> None:
    """A proxy would reach its own loopback, not this machine's: with ``HTTP_PROXY`` set for
    a corporate network and Ollama on 127.0.0.1 (the default), every call went to the proxy
    and failed. Ollama's own CLI (Go's ``ProxyFromEnvironment``) never proxies loopback;
    httpx and the ``ollama`` client do, with no ``NO_PROXY`` saying otherwise."""
    host = emulator.url.replace("127.0.0.1", name)
    reply = _chat(flavour, host, db_url=sqlite_url, retries=0)
    assert reply.meter is not None and reply.meter.status == "ok"
    assert [r.target for r in emulator.requests_to("/api/chat")] == ["/api/chat"]
    assert proxy.requests == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_call_through_an_environment_proxy_ollama_has_is_sent_once(
    sqlite_url: str, emulator: OllamaEmulator, proxy: OllamaEmulator, flavour: str
) -> None:
    """A call whose body went whole through the proxy and whose answer never came in time is
    Ollama's (ometer's transport heard it sent): retries on, it is not sent again."""
    proxy.inject(Fault.HANG, times=4)  # every attempt, were it sent again
    with pytest.raises(UpstreamError) as raised:
        _chat(flavour, FAR, db_url=sqlite_url, retries=3, upstream_timeout=0.5)
    assert len(proxy.requests_to("/api/chat")) == 1
    assert raised.value.taken is True
    assert emulator.requests_to("/api/chat") == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
def test_no_proxy_sends_straight_to_ollama(
    sqlite_url: str,
    emulator: OllamaEmulator,
    proxy: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    flavour: str,
    no_proxy: str,
) -> None:
    monkeypatch.setenv("NO_PROXY", no_proxy)
    _chat(flavour, emulator.url, db_url=sqlite_url, retries=0)
    assert [r.target for r in emulator.requests_to("/api/chat")] == ["/api/chat"]
    assert proxy.requests == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_trust_env_off_or_a_proxy_given_wins_over_the_environment(
    sqlite_url: str, emulator: OllamaEmulator, proxy: OllamaEmulator, flavour: str
) -> None:
    """As httpx has it: ``trust_env=False`` reads no proxy from the environment, ``proxy=None``
    is none given, and an explicit ``proxy=`` is the way for every call whatever the
    environment says."""
    _chat(flavour, emulator.url, db_url=sqlite_url, retries=0, trust_env=False)
    assert len(emulator.requests_to("/api/chat")) == 1 and proxy.requests == []
    _chat(flavour, FAR, db_url=sqlite_url, retries=0, proxy=None)  # none given
    assert len(emulator.requests_to("/api/chat")) == 1 and len(proxy.requests) == 1
    with OllamaEmulator() as given_proxy:
        _chat(flavour, FAR, db_url=sqlite_url, retries=0, proxy=given_proxy.url)
        assert [r.target for r in given_proxy.requests_to("/api/chat")] == [f"{FAR}/api/chat"]
    assert len(emulator.requests_to("/api/chat")) == 1 and len(proxy.requests) == 1


_HOSTS = st.sampled_from([
    "localhost", "LOCALHOST", "127.0.0.1", "::1", "10.0.0.0/8", "corp.example", ".corp.example",
    "*", "", " ", "http://ollama.corp", "https://x.example:8443", "[::1]", "*.example",
    "::1/128", "10.0.0.1/8", "fe80::1%eth0", "1.2.3", "256.1.1.1", "Localhost",
])  # fmt: skip
_PROXIES = st.sampled_from(["", "proxy:3128", "http://proxy:3128", "socks5://p:1080"])


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    proxies=st.fixed_dictionaries(
        {"http_proxy": _PROXIES, "HTTPS_PROXY": _PROXIES, "all_proxy": _PROXIES}
    ),
    no_proxy=st.lists(_HOSTS, max_size=4).map(",".join),
)
def test_the_environment_is_read_as_httpx_reads_it(
    monkeypatch: pytest.MonkeyPatch, proxies: dict[str, str], no_proxy: str
) -> None:
    """The same patterns, proxies and exclusions as httpx's own (NO_PROXY's ``*``, hosts,
    addresses, whole URLs), so the more specific exclusions still win."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in proxies.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("no_proxy", no_proxy)
    assert environment_proxies() == get_environment_proxies()
