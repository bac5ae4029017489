"""A call's tags pass every proxy on the way to the gateway that records the call.

A gateway says whom it charges a call to, and its tags, to what is behind it (``_onward``), as
an ometer client does: a metering gateway there records the call with them. Tags went in one
``X-Ometer-Tags`` header of up to 64 KiB (64 tags of 256 CJK characters: 54 KB). Ollama's Go
server reads 1 MB of headers, and ``ometer serve`` 64 KiB, but a proxy before either reads a
header line of 8 KiB at most (nginx's buffer, aiohttp's and Apache's 8,190 bytes; uvicorn on
h11 16 KiB of them all): every call carrying longer tags was refused there (400), through a
gateway or from a client. Now tags longer than a line go in parts, each a line any of them
reads (``X-Ometer-Tags``, ``X-Ometer-Tags-2``...), which the gateway puts back together.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from starlette.datastructures import Headers

from ollama_meter import MeteredClient
from ollama_meter.config import load_settings
from ollama_meter.errors import ValidationError
from ollama_meter.gateway._attribution import resolve
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream._recorded import who_headers
from tests.gateway.conftest import Gateway
from tests.gateway.test_tags_header import TAG_SETS

HI = [{"role": "user", "content": "hi"}]
NOTED = {"ometer.client_span": ANY}
LONGEST = {f"t{n:02}" + "k" * 61: "\u8a9e" * 256 for n in range(64)}
"""64 tags at their longest in CJK: 54 KB of JSON in UTF-8."""


@pytest.fixture
def proxy() -> Iterator[Callable[[str], str]]:
    """``proxy(upstream)``: the URL of a plain aiohttp reverse proxy to ``upstream``, with
    aiohttp's own limits on what it reads (a header line of 8,190 bytes)."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []

    def start(upstream: str) -> str:
        async def forward(request: web.Request) -> web.StreamResponse:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            async with (
                aiohttp.ClientSession() as session,
                session.request(
                    request.method,
                    upstream + request.path_qs,
                    headers=headers,
                    data=await request.read(),
                ) as answer,
            ):
                body = await answer.read()
                kept = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
                }
                return web.Response(status=answer.status, body=body, headers=kept)

        async def serve() -> str:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", forward)
            runner = web.AppRunner(app)
            await runner.setup()
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            await web.SockSite(runner, sock).start()
            runners.append(runner)
            return f"http://127.0.0.1:{sock.getsockname()[1]}"

        return asyncio.run_coroutine_threadsafe(serve(), loop).result(30)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield start
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


def test_the_longest_tags_reach_a_gateway_behind_a_proxy_and_a_gateway(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    proxy: Callable[[str], str],
) -> None:
    """Caller → gateway → aiohttp proxy → gateway → Ollama, both gateways on one ledger: the
    inner gateway's span, the call's one record, carries the caller's 64 tags exactly. The
    proxy refused the outer gateway's 54 KB header line (400) and the call failed."""
    inner = serve_on(emulator.url, sqlite_url)
    outer = serve_on(proxy(inner.url), sqlite_url)
    text = json.dumps(LONGEST, ensure_ascii=False, separators=(",", ":")).encode()
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    answer = outer.client.post(
        "/api/chat", json=body, headers=[("X-Ometer-Department", "sales"), ("X-Ometer-Tags", text)]
    )
    assert answer.status_code == 200, answer.text
    inner.settle()
    outer.settle()
    (span,) = inner.ledger.latest(SpanFilter(), 10)
    assert (span.department, span.status, span.upstream_host) == ("sales", "ok", emulator.url)
    assert span.id == answer.headers["x-ometer-span-id"]
    assert span.tags == {**LONGEST, **NOTED}


def test_a_clients_longest_tags_reach_a_gateway_behind_a_proxy(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    proxy: Callable[[str], str],
) -> None:
    """An ometer client (the Python API, ``ometer chat``) through a proxy to a gateway on its
    ledger: the gateway's span is the call's record, with the client's tags."""
    gw = serve_on(emulator.url, sqlite_url)
    with MeteredClient(proxy(gw.url), db_url=sqlite_url, tags=LONGEST) as client:
        answer = client.chat("llama3.1:8b", HI)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.id, span.tags) == (answer.meter.id, {**LONGEST, **NOTED})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(tags=LONGEST)
@example(tags={f"t{n:02}" + "k" * 61: "\U0001f600" * 256 for n in range(64)})
@given(tags=TAG_SETS)
def test_any_tags_go_in_lines_every_proxy_reads_and_come_back_exactly(
    tags: dict[str, str],
) -> None:
    """Any tags a call may carry: each header line they are sent in (name, ": ", value as
    UTF-8, CRLF) is within 8,000 bytes; read back as a server reads them (a byte a
    character), the gateway gets the tags exactly."""
    sent = who_headers("default", "sales", None, tags)
    lines = [f"{name}: {value}\r\n".encode() for name, value in sent.items()]
    assert all(len(line) <= 8_000 for line in lines)
    raw: list[tuple[bytes, bytes]] = [(n.lower().encode(), v.encode()) for n, v in sent.items()]
    got = resolve(Headers(raw=raw), None, _settings(), require_key=False)
    assert got.tags == tags


_SETTINGS: list[Any] = []


def _settings() -> Any:
    if not _SETTINGS:
        _SETTINGS.append(load_settings())
    return _SETTINGS[0]


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ([(b"x-ometer-tags", b'{"a":"1"}'), (b"x-ometer-tags-2", b'{"a":"2"}')], "'a' twice"),
        ([(b"x-ometer-tags-2", b'{"a":"1"}'), (b"x-ometer-tags-2", b"{}")], "given 2 times"),
        ([(b"x-ometer-tags", b'{"a":"1"}'), (b"x-ometer-tags-3", b"[]")], "not a JSON object"),
        (
            [(f"x-ometer-tags-{n}".encode(), b'{"k%d":"%s"}' % (n, b"v" * 256)) for n in (2, 3)]
            + [(b"x-ometer-tags", json.dumps({f"t{n}": "v" for n in range(63)}).encode())],
            "at most 64",
        ),
        ([(b"x-ometer-tags-9", json.dumps({"k": "v" * 70_000}).encode())], "reads at most"),
    ],
)
def test_parts_of_tags_follow_the_rules_of_one_header(
    raw: list[tuple[bytes, bytes]], said: str
) -> None:
    """A tag in two parts, a part given twice, a part that is no object, more than 64 tags
    or 64 KiB in all: refused (a 400 naming X-Ometer-Tags), as in one header."""
    with pytest.raises(ValidationError, match="X-Ometer-Tags") as refused:
        resolve(Headers(raw=raw), None, _settings(), require_key=False)
    assert said in str(refused.value)
