"""The Python API before an upstream whose whole answer arrives (a 200) and cannot be read.

Ollama writes a whole answer only once it has done all of the work, so the gateway charges
such a call its prompt (estimated) whatever became of the answer: never a silent $0 for work
that was done. The Python API, whose ``ollama`` client reads the answer itself, must meter
the same answer the same way.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter.errors import UpstreamError
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway, settle
from tests.gateway.test_hostile_transport import ROUTES, HostileProxy, Spoil, unreadable
from tests.gateway.test_lying_finals import PATHS, Hostile, ScriptedUpstream, _request

models = itertools.count()
UNREADABLE = [b"1.5", b"NaN", b'{"n": 1}', b"[3]", b'"many"']
"""Counts the ``ollama`` client refuses to read (its pydantic models want an integer)."""


@pytest.fixture
def both(
    app_on: Callable[..., Gateway], sqlite_url: str
) -> Iterator[tuple[Gateway, MeteredClient, ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    try:
        gw = app_on(upstream.url, sqlite_url)
        gw.ledger.add_price_rule(token_prices())
        with MeteredClient(upstream.url, department="sdk", db_url=sqlite_url) as client:
            yield gw, client, upstream, sqlite_url
    finally:
        upstream.close()


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(PATHS),
    field=st.sampled_from(["prompt_eval_count", "eval_count", "total_duration"]),
    value=st.sampled_from(UNREADABLE),
    how=st.sampled_from(["unreadable", "not done", "cut short"]),
)
@example(path="/api/chat", field="eval_count", value=b"1.5", how="unreadable")
@example(path="/api/generate", field="eval_count", value=b"5", how="not done")
@example(path="/api/embed", field="eval_count", value=b"5", how="cut short")
def test_a_whole_answer_that_came_and_cannot_be_read_is_charged_its_prompt(
    both: tuple[Gateway, MeteredClient, ScriptedUpstream, str],
    path: str,
    field: str,
    value: bytes,
    how: str,
) -> None:
    """Such a call through the Python API was an error charged nothing: 0 tokens, said to be
    Ollama's own count (``reported``), at $0. Through the gateway the same answer was charged
    its estimated prompt. Both now meter it alike."""
    gw, client, upstream, db = both
    if how == "not done" and path == "/api/embed":
        how = "cut short"  # an embedding answer has no "done"
    model = f"m{next(models)}"
    bad = Hostile(path, False, {field: value}, b'"m"', b'"x"', b'"stop"', "once")
    answer = bad.body() if how == "unreadable" else bad.final(eval_count=b"5")
    if how == "not done":
        answer = answer.replace(b'"done": true', b'"done": false')
    if how == "cut short":
        upstream.cut.add(model)
    upstream.script[model] = answer
    request = _request(path, model, False)
    with pytest.raises(UpstreamError):
        getattr(client, path.removeprefix("/api/"))(**request)
    reply = gw.client.post(path, json=request, headers={"X-Ometer-Department": "gw"})

    async def on_a_loop() -> None:
        async with AsyncMeteredClient(upstream.url, department="aio", db_url=db) as aio:
            with pytest.raises(UpstreamError):
                await getattr(aio, path.removeprefix("/api/"))(**request)
            settle(aio.meter)

    asyncio.run(on_a_loop())
    settle(client.meter)
    sdk, gateway = (
        next(s for s in gw.ledger.latest(SpanFilter(department=d), 5) if s.request_model == model)
        for d in ("sdk", "gw")
    )
    (aio,) = [
        s for s in gw.ledger.latest(SpanFilter(department="aio"), 5) if s.request_model == model
    ]

    def metered(span: Any) -> tuple[object, ...]:
        return (span.token_source, span.input_tokens, span.output_tokens, span.cost_tokens)

    # The gateway reads a figure of the wrong type as absent (estimated): an ok call, which the
    # ollama client cannot hand back. Metered the same, whether or not it is an error.
    assert metered(sdk) == metered(aio) == metered(gateway)
    assert sdk.status == "error" and sdk.input_tokens > 0 and sdk.token_source == "estimated"
    assert gateway.status == ("ok" if reply.status_code == 200 else "error")


@pytest.mark.parametrize(
    "first",
    [
        b'{"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": false, "created_at": 5}',
        b'{"model": "m", "response": "hi", "done": false, "eval_count": 1.5}',
    ],
)
def test_a_stream_whose_first_chunk_the_client_cannot_take_is_charged_its_prompt(
    both: tuple[Gateway, MeteredClient, ScriptedUpstream, str], first: bytes
) -> None:
    """Ollama streams its first chunk once the prompt is evaluated. One the ollama client
    refuses (a field of the wrong type) failed the Python API's call at $0, 0 tokens
    "reported"; the gateway reads the same chunk (the field as absent) and charged the prompt."""
    gw, client, upstream, _ = both
    path = "/api/chat" if b"message" in first else "/api/generate"
    model = f"m{next(models)}"
    upstream.script[model] = first + b"\n"  # and nothing after it: the stream ends unfinished
    request = _request(path, model, True)
    with pytest.raises(UpstreamError):
        for _ in getattr(client, path.removeprefix("/api/"))(**request):
            pass
    gw.client.post(path, json=request, headers={"X-Ometer-Department": "gw"})
    settle(client.meter)
    sdk, gateway = (
        next(s for s in gw.ledger.latest(SpanFilter(department=d), 5) if s.request_model == model)
        for d in ("sdk", "gw")
    )
    assert (sdk.status, gateway.status) == ("error", "error")
    assert (
        (sdk.token_source, sdk.input_tokens)
        == ("estimated", gateway.input_tokens)
        != (
            "estimated",
            0,
        )
    )


@pytest.fixture
def hostile(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Iterator[tuple[Gateway, HostileProxy]]:
    """A gateway on SQLite before a proxy that spoils the emulator's answers."""
    proxy = HostileProxy(emulator)
    try:
        config = {"upstream_timeout": 3, "retries": 0, "breaker_failures": 1000}
        gw = serve_on(proxy.url, sqlite_url, config=config)
        gw.ledger.add_price_rule(token_prices())
        yield gw, proxy
    finally:
        proxy.close()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(["/api/chat", "/api/generate"]), spoil=unreadable)
@example(path="/api/chat", spoil=Spoil("one_line"))
@example(path="/api/generate", spoil=Spoil("cut", at=0.001))
def test_a_stream_unreadable_from_its_first_line_is_charged_its_prompt_as_the_gateway_does(
    hostile: tuple[Gateway, HostileProxy], sqlite_url: str, path: str, spoil: Spoil
) -> None:
    """Only a first chunk the ``ollama`` client refused as a JSON object was charged; one that
    is no JSON at all (every line run into one, gzip'd unsaid, HTML, bytes not UTF-8), cut
    short, reset or in a coding it does not name failed the Python API's call at $0, 0
    tokens ``reported``, where the gateway charges its prompt."""
    gw, proxy = hostile
    proxy.spoil = spoil
    request = {"model": f"m{next(models)}", "stream": True, **ROUTES[path]}
    reply = gw.client.post(path, json=request, headers={"X-Ometer-Department": "gw"})
    with MeteredClient(proxy.url, department="sdk", db_url=sqlite_url, retries=0) as client:
        with pytest.raises(UpstreamError):
            for _ in getattr(client, path.removeprefix("/api/"))(**request):
                pass
        settle(client.meter)
    sdk, gateway = (gw.ledger.latest(SpanFilter(department=d), 1)[0] for d in ("sdk", "gw"))
    if reply.status_code == 502:  # reset before its head was read: no answer began
        return
    assert (sdk.status, gateway.status) == ("error", "error")
    assert (
        (sdk.token_source, sdk.input_tokens)
        == ("estimated", gateway.input_tokens)
        != (
            "estimated",
            0,
        )
    )
