"""The Python API takes ``ollama.Client``'s httpx arguments (``headers=``, ``timeout=``,
``verify=``...) and sends Ollama what that client sends with them, on every call."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, MeteredClient, UpstreamError, ValidationError
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator
from tests._raw_http import answering as answering_server

HI = [{"role": "user", "content": "say hi to the team"}]
SECRET = "Bearer s3cr3t-t0ken-never-logged"

# A header name as HTTP has it (a token), and a value httpx sends as given (no spaces around
# it: HTTP drops them), never one of ometer's own.
_NAMES = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z").filter(
    lambda name: (
        not name.lower().startswith("x-ometer-")
        and name.lower() not in ("host", "content-length", "transfer-encoding", "connection")
    )
)
_VALUES = st.from_regex(r"\A[!-~]([ -~]{0,30}[!-~])?\Z")


def _seen(emulator: OllamaEmulator, path: str) -> list[dict[str, str]]:
    """The headers of each request to ``path``, but the request's length and ometer's own."""
    return [
        {
            name: value
            for name, value in request.headers.items()
            if name != "content-length" and not name.startswith("x-ometer-")
        }
        for request in emulator.requests_to(path)
    ]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(headers=st.dictionaries(_NAMES, _VALUES, max_size=4))
def test_headers_reach_ollama_as_the_ollama_client_sends_them(
    sqlite_url: str, emulator: OllamaEmulator, headers: dict[str, str]
) -> None:
    """``headers=`` (an Authorization for a proxy before Ollama) was refused; code written for
    ``ollama.Client(host, headers=...)`` could not move to ours unchanged. Its defaults
    (``Content-Type``, ``Accept``, ``User-Agent``) win over the caller's, as there."""
    expected: dict[str, list[dict[str, str]]] = {}
    emulator.reset()
    with ollama.Client(emulator.url, headers=headers) as real:
        real.chat(model="llama3.1:8b", messages=HI)
        real.list()
        real.show("llama3.1:8b")
    expected = {path: _seen(emulator, path) for path in ("/api/chat", "/api/tags", "/api/show")}
    emulator.reset()
    with MeteredClient(emulator.url, db_url=sqlite_url, headers=headers) as metered:
        metered.chat(model="llama3.1:8b", messages=HI)
        metered.list()
        metered.show("llama3.1:8b")
    assert {path: _seen(emulator, path) for path in expected} == expected


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_headers_go_with_every_attempt_and_every_call(
    sqlite_url: str,
    emulator: OllamaEmulator,
    flavour: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retry, a stream, an embedding and the calls that run no model carry them; the
    secret is in no span and no log line."""
    caplog.set_level(logging.DEBUG)
    sent = {"Authorization": SECRET}
    emulator.inject(Fault.HTTP_503, times=1)
    kwargs: dict[str, Any] = {"db_url": sqlite_url, "headers": sent, "retry_backoff": 0.01}
    if flavour == "sync":
        with MeteredClient(emulator.url, **kwargs) as client:
            client.chat(model="llama3.1:8b", messages=HI)
            list(client.chat(model="llama3.1:8b", messages=HI, stream=True))
            client.embed(model="nomic-embed-text", input="a")
            client.ps()
            spans = client.meter.ledger.latest(SpanFilter(), 10)
    else:

        async def run() -> list[Any]:
            async with AsyncMeteredClient(emulator.url, **kwargs) as client:
                await client.chat(model="llama3.1:8b", messages=HI)
                async for _ in await client.chat(model="llama3.1:8b", messages=HI, stream=True):
                    pass
                await client.embed(model="nomic-embed-text", input="a")
                await client.ps()
                return client.meter.ledger.latest(SpanFilter(), 10)

        spans = asyncio.run(run())
    paths = [r.path for r in emulator.requests]
    assert paths == ["/api/chat", "/api/chat", "/api/chat", "/api/embed", "/api/ps"]
    assert [r.headers.get("authorization") for r in emulator.requests] == [SECRET] * 5
    assert len(spans) == 3
    assert all(SECRET not in repr(span) and "s3cr3t" not in repr(span) for span in spans)
    assert "s3cr3t" not in caplog.text


def test_ollama_api_key_is_sent_as_the_ollama_client_sends_it(
    sqlite_url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OLLAMA_API_KEY`` is a bearer unless ``headers=`` has an Authorization, as there."""
    monkeypatch.setenv("OLLAMA_API_KEY", "from-env")
    for headers in (None, {"authorization": "Basic abc"}):
        emulator.reset()
        ollama.Client(emulator.url, headers=headers).chat(model="llama3.1:8b", messages=HI)
        with MeteredClient(emulator.url, db_url=sqlite_url, headers=headers) as metered:
            metered.chat(model="llama3.1:8b", messages=HI)
        real, ours = _seen(emulator, "/api/chat")
        assert ours == real
        assert ours["authorization"] == (headers or {}).get("authorization", "Bearer from-env")


@pytest.mark.parametrize("name", ["X-Ometer-Department", "x-ometer-tenant", "X-OMETER-USER"])
def test_ometers_own_headers_are_refused_not_sent(
    sqlite_url: str, emulator: OllamaEmulator, name: str
) -> None:
    """Whom a call is charged to is said by its arguments: a header naming another would
    charge the gateway's record of it elsewhere than the client's."""
    with pytest.raises(ValidationError, match=rf"^headers= may not set {name}: ometer"):
        MeteredClient(emulator.url, db_url=sqlite_url, headers={name: "sales"})
    assert emulator.requests == []


def test_a_timeout_given_is_the_timeout_to_ollama(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """``timeout=`` is read as the ``ollama`` client reads it, in place of the configured one:
    None waits as long as the answer takes, a number cuts an answer that never comes."""
    emulator.latency = 1.0
    with MeteredClient(
        emulator.url, db_url=sqlite_url, upstream_timeout=0.2, timeout=None, retries=0
    ) as client:
        assert client.chat(model="llama3.1:8b", messages=HI).meter is not None
    emulator.latency = 0.0
    emulator.inject(Fault.HANG)
    with MeteredClient(
        emulator.url,
        db_url=sqlite_url,
        upstream_timeout=600,
        timeout=httpx.Timeout(0.3),
        retries=0,
    ) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.chat(model="llama3.1:8b", messages=HI)


def test_httpx_arguments_reach_every_call(sqlite_url: str, emulator: OllamaEmulator) -> None:
    """``auth=``, ``params=``, ``cookies=`` and the connection's settings go to httpx as the
    ``ollama`` client hands them."""
    with MeteredClient(
        emulator.url,
        db_url=sqlite_url,
        auth=("alice", "pw"),
        params={"tenant_hint": "x"},
        cookies={"session": "c"},
        verify=False,
        trust_env=False,
        follow_redirects=True,
        max_redirects=3,
        limits=httpx.Limits(max_connections=4),
    ) as client:
        client.chat(model="llama3.1:8b", messages=HI)
        client.list()
    for request in emulator.requests:
        assert request.headers["authorization"] == "Basic YWxpY2U6cHc="
        assert request.query == "tenant_hint=x"
        assert request.headers["cookie"] == "session=c"


@pytest.mark.parametrize("flavour", [MeteredClient, AsyncMeteredClient])
@pytest.mark.parametrize(
    ("argument", "why"),
    [
        ("transport", "its own transport"),
        ("mounts", "its own transport"),
        ("event_hooks", "its own httpx hooks"),
        ("base_url", "host="),
    ],
)
def test_an_httpx_argument_ometer_cannot_honour_is_refused_saying_why(
    sqlite_url: str, emulator: OllamaEmulator, flavour: type, argument: str, why: str
) -> None:
    with pytest.raises(TypeError, match=rf"^{flavour.__name__}\(\) cannot take {argument}=: ") as e:
        flavour(emulator.url, db_url=sqlite_url, **{argument: object()})
    assert why in str(e.value) and "\n" not in str(e.value)


def test_a_whole_answer_cut_before_a_byte_says_the_server_hung_up(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """Ollama reached, the connection closed with no answer: it said "cannot reach Ollama
    ... is it running?" of a server that took the call."""
    emulator.inject(Fault.DROP)
    with MeteredClient(emulator.url, db_url=sqlite_url, retries=0) as client:
        with pytest.raises(UpstreamError) as failed:
            client.chat(model="llama3.1:8b", messages=HI)
        (span,) = client.meter.ledger.latest(SpanFilter(), 1)
    message = str(failed.value)
    assert "is it running" not in message and "cannot reach" not in message
    assert "closed the connection without answering" in message
    assert span.error_message == message


def test_redirects_are_followed_when_asked(sqlite_url: str, emulator: OllamaEmulator) -> None:
    """``follow_redirects=True`` (``ollama.Client``'s default) follows a 307 to Ollama; by
    default a redirect is still said where it points (``test_client_arguments.py``)."""
    with answering_server() as server:
        server.answer = (307, {"location": f"{emulator.url}{{path}}"}, b"")  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with MeteredClient(
            url, db_url=sqlite_url, follow_redirects=True, headers={"X-Ometer-Key": "om-k"}
        ) as client:
            reply = client.chat(model="llama3.1:8b", messages=HI)
    assert reply.meter is not None and reply.meter.status == "ok"
    (sent,) = emulator.requests_to("/api/chat")
    assert sent.body["messages"] == HI and sent.headers["x-ometer-key"] == "om-k"


def test_an_async_clients_timeout_is_its_own(sqlite_url: str, emulator: OllamaEmulator) -> None:
    emulator.inject(Fault.HANG)

    async def run() -> None:
        async with AsyncMeteredClient(
            emulator.url, db_url=sqlite_url, upstream_timeout=600, timeout=0.3, retries=0
        ) as client:
            await client.chat(model="llama3.1:8b", messages=HI)

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(run())
