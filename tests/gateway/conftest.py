"""Gateways in front of the emulator, on a fresh ledger: in this process, or on a real port.

``app``/``app_gateway`` run the ASGI app in process through Starlette's TestClient
(lifespan included): for error shapes, attribution, access and the gateway's own
pages. ``serve``/``gateway`` run it under uvicorn on a loopback port: for what only
a real server shows (the official clients, streams, hang-ups, timeouts on the wire).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, cast

import httpx
import pytest
import uvicorn

with warnings.catch_warnings():  # Starlette prefers httpx2 for its TestClient; httpx serves
    # (its StarletteDeprecationWarning, which Starlette 1.0 does not have, is one of these)
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from ollama_meter.config import load_settings
from ollama_meter.gateway import GatewayOptions, create_app, listening_socket, server_config
from ollama_meter.ledger import Ledger, SpanFilter, open_ledger
from ollama_meter.meter import Meter
from ollama_meter.meter._meter import utc_now
from ollama_meter.testing import DEFAULT_MODELS, OllamaEmulator
from ollama_meter.upstream._tls import client_tls
from tests._raw_http import RawServer
from tests.factories import token_prices


@dataclass
class Gateway:
    url: str
    ledger: Ledger
    """The gateway's ledger, read once the spans of the calls answered so far are committed
    (the gateway answers first: ``_behind``)."""
    server: uvicorn.Server | None
    client: httpx.Client
    """Requests to this gateway: ``client.post("/api/chat", ...)``."""
    meter: Meter
    """The meter the gateway runs its calls through."""

    def settle(self) -> None:
        """Wait until the spans of the calls answered so far are committed, their budgets
        settled (the gateway answers first: ``_behind``)."""
        settle(self.meter)


def settle(meter: Meter) -> None:
    behind = meter.behind
    assert behind is None or behind.settle(60), "answered spans not committed in 60 s"


class _Committed:
    """A ledger whose every use waits first for the spans a meter answered before their
    commit: a test reads what a user reads a moment after the answer."""

    def __init__(self, ledger: Ledger, meter: Meter) -> None:
        self._ledger, self._meter = ledger, meter

    def __getattr__(self, name: str) -> Any:
        settle(self._meter)
        return getattr(self._ledger, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # A setting a test gives the ledger (``drain_slice``) is the ledger's, not this view's.
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._ledger, name, value)


def committed(ledger: Ledger, meter: Meter) -> Ledger:
    return cast(Ledger, _Committed(ledger, meter))


def left_mid_stream(gw: Gateway, emulator: OllamaEmulator) -> Any:
    """The one span of a call whose caller left mid-stream, once the gateway noticed (on its
    next write) and stopped Ollama: a client abort, its reply's tokens estimated. Call it
    while Ollama is still streaming slowly, or it may finish before the gateway notices."""
    deadline = time.monotonic() + 10
    while not (gw.ledger.latest(SpanFilter(), 1) and emulator.hangups):
        assert time.monotonic() < deadline, "the gateway never noticed its caller leave"
        time.sleep(0.05)
    assert emulator.hangups == 1
    (span,) = gw.ledger.latest(SpanFilter(), 100)
    assert (span.status, span.error_type, span.token_source) == (
        "client_abort",
        "client_abort",
        "estimated",
    )
    return span


class _Server(uvicorn.Server):
    """uvicorn's server, looking whether it is asked to stop every 10 ms, not every 100 ms:
    each gateway a test started waited 50 ms on average to begin stopping (its date header
    is renewed ten times a second, not once)."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.01)


@pytest.fixture
def serve_on() -> Iterator[Callable[..., Gateway]]:
    """Start gateways on a given ledger URL: ``serve_on(upstream, db, clock, config, **options)``.

    ``config`` overrides settings (``upstreams``, ``slots``...); ``server_options`` go to
    ``server_config`` (``max_connections``); ``port`` is the one to listen on (0: any free
    one); ``options`` are GatewayOptions.
    """
    servers: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(
        upstream: str,
        db: str,
        clock: Callable[[], datetime] | None = None,
        config: dict[str, Any] | None = None,
        server_options: dict[str, Any] | None = None,
        port: int = 0,
        **options: Any,
    ) -> Gateway:
        settings = load_settings(db_url=db, ollama_host=upstream, **(config or {}))
        sock = listening_socket("127.0.0.1", port)  # bound here: no other program can take it
        port = int(sock.getsockname()[1])
        meter = Meter.from_settings(settings, source="gateway", clock=clock or utc_now)
        app = create_app(settings, GatewayOptions(**options), meter=meter)
        server = _Server(server_config(app, host="127.0.0.1", port=port, **(server_options or {})))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread, sock))
        deadline = time.monotonic() + 60  # a busy machine: a wait, not a measure
        while not server.started:
            assert thread.is_alive(), "gateway did not start"
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        # The process's one CA bundle (plain http here): loading one per gateway cost 20 ms.
        client = httpx.Client(base_url=url, timeout=30, verify=client_tls())
        clients.append(client)
        ledger = committed(open_ledger(settings.ledger_url), meter)
        return Gateway(url, ledger, server, client, meter)

    clients: list[httpx.Client] = []
    yield start
    for client in clients:
        client.close()
    for server, _, _ in servers:  # all stop at once, not each after the one before
        server.should_exit = True
    for _, thread, sock in servers:
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def app_on() -> Iterator[Callable[..., Gateway]]:
    """Gateways in this process, no server: ``app_on(upstream, db, clock=None, config=None,
    **options)``; ``config`` overrides settings (``slots``...), ``options`` are GatewayOptions."""
    clients: list[TestClient] = []

    def start(
        upstream: str,
        db: str,
        clock: Callable[[], datetime] | None = None,
        config: dict[str, Any] | None = None,
        **options: Any,
    ) -> Gateway:
        settings = load_settings(db_url=db, ollama_host=upstream, **(config or {}))
        meter = Meter.from_settings(settings, source="gateway", clock=clock or utc_now)
        client = TestClient(create_app(settings, GatewayOptions(**options), meter=meter))
        client.__enter__()  # runs the lifespan: the gateway starts
        clients.append(client)
        ledger = committed(open_ledger(settings.ledger_url), meter)
        return Gateway(str(client.base_url), ledger, None, client, meter)

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def app(db_url: str, app_on: Callable[..., Gateway]) -> Callable[..., Gateway]:
    """In-process gateways on this test's ledger (SQLite, then PostgreSQL)."""

    def start(upstream: str, **options: Any) -> Gateway:
        return app_on(upstream, db_url, **options)

    return start


@pytest.fixture
def app_gateway(app: Callable[..., Gateway], emulator: OllamaEmulator) -> Gateway:
    return app(emulator.url)


@pytest.fixture
def serve(db_url: str, serve_on: Callable[..., Gateway]) -> Callable[..., Gateway]:
    """Start gateways on this test's ledger (SQLite, then PostgreSQL)."""

    def start(upstream: str, **options: Any) -> Gateway:
        return serve_on(upstream, db_url, **options)

    return start


@pytest.fixture
def gateway(serve: Callable[..., Gateway], emulator: OllamaEmulator) -> Gateway:
    return serve(emulator.url)


@pytest.fixture
def sqlite_gateway(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Gateway:
    """A gateway on SQLite only, for what does not depend on the database."""
    return serve_on(emulator.url, sqlite_url)


@pytest.fixture
def sqlite_app(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Gateway:
    """An in-process gateway on SQLite only: error shapes, attribution, the gateway's pages."""
    return app_on(emulator.url, sqlite_url)


@pytest.fixture
def emulators() -> Iterator[Callable[..., OllamaEmulator]]:
    """Start emulators that have only the models named: ``emulators("llama3.1:8b", ...)``."""
    started: list[OllamaEmulator] = []

    def start(*names: str, token_latency: float = 0.0) -> OllamaEmulator:
        models = [m for m in DEFAULT_MODELS if m.name in names]
        emu = OllamaEmulator(models=models, token_latency=token_latency).start()
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


def key_in_authorization(value: str) -> str | None:
    """The key an ``Authorization`` value carries, as README says the gateway reads it: a
    gateway key (``om_...``) after any scheme or none, else a bearer's token."""
    words = value.split()
    if words and words[-1].startswith("om_") and len(words) <= 2:
        return words[-1]
    return value[7:].strip() if value[:7].lower() == "bearer " else None


@pytest.fixture
def upstream(app_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[tuple[Gateway, Any]]:
    """An in-process gateway (SQLite) before an upstream whose answer each example scripts
    (``server.body``, bytes as they are sent), calls priced by the token."""
    server = RawServer(lambda: server.body)  # type: ignore[attr-defined]
    try:
        gw = app_on(server.url, sqlite_url)
        gw.ledger.add_price_rule(token_prices())
        yield gw, server
    finally:
        server.close()


class _Liar(BaseHTTPRequestHandler):
    """Answers each GET with what its server was told: ``answers[path] = (status, body)``."""

    def do_GET(self) -> None:
        status, body = self.server.answers.get(self.path, (404, b"404 page not found"))  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def liar() -> Iterator[Callable[[dict[str, tuple[int, bytes]]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answers: dict[str, tuple[int, bytes]]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
        server.answers = answers  # type: ignore[attr-defined]
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def in_process(sqlite_url: str) -> Iterator[Callable[..., TestClient]]:
    """A gateway in this process in front of ``upstreams``: ``in_process(*urls, **settings)``."""
    clients: list[TestClient] = []

    def start(*upstreams: str, **config: Any) -> TestClient:
        settings = load_settings(
            db_url=sqlite_url,
            ollama_host=upstreams[0].split("#")[0],
            upstreams=",".join(upstreams),
            **config,
        )
        client = TestClient(create_app(settings, GatewayOptions()))
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@contextlib.contextmanager
def threads_profiled(hook: Callable[[FrameType, str, Any], None]) -> Iterator[None]:
    """``hook`` sees every Python call and return in the threads started meanwhile (the
    event loop's, the thread pools'): which thread ran what."""
    threading.setprofile(hook)
    try:
        yield
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        sys.setprofile(None)
