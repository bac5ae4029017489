"""However a fleet call ends, its slot, its counts and its breaker ticket come back, once.

Driven through the ASGI app in process (lifespan included), with a client whose hang-up
the test places exactly, in front of two emulated servers that fail in any way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.config import load_settings
from ollama_meter.gateway import GatewayOptions, create_app
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.testing import Fault, OllamaEmulator
from tests._committed import committed
from tests.factories import token_prices
from tests.gateway.conftest import TestClient

LLAMA = "llama3.1:8b"
HI = [{"role": "user", "content": "hi"}]
FAULTS = [
    None,
    Fault.HTTP_500,
    Fault.HTTP_503,
    Fault.MIDSTREAM_ERROR,
    Fault.DROP,
    Fault.ERROR_DONE,
    Fault.OMIT_COUNTS,
    Fault.NO_ROUTE,
    Fault.IGNORE_CAP,
]


@pytest.fixture(params=["breakers closed", "breakers trip"])
def two_servers(
    request: pytest.FixtureRequest, emulators: Callable[..., OllamaEmulator], sqlite_url: str
) -> Iterator[tuple[TestClient, OllamaEmulator, OllamaEmulator]]:
    one, two = emulators(LLAMA), emulators(LLAMA)
    ledger = open_ledger(sqlite_url)
    ledger.add_price_rule(token_prices())
    # A hard budget far above any call: a streamed call is cut at the reply cap it names.
    ledger.save_budget(
        Budget(tenant="default", department="sales", period="day", limit=10**12, currency="USD")
    )
    settings_ = load_settings(
        db_url=sqlite_url,
        ollama_host=one.url,
        upstreams=f"{one.url}#slots=1,{two.url}#slots=1",
        discovery_interval=3600,
        retries=1,
        retry_backoff=0.001,
        # Closed all along; or open at each failure, a trial call the next moment.
        **(
            {"breaker_failures": 1000}
            if request.param == "breakers closed"
            else {"breaker_failures": 1, "breaker_reset": 0.001}
        ),
    )
    client = TestClient(create_app(settings_, GatewayOptions()))
    client.__enter__()
    try:
        yield client, one, two
    finally:
        client.__exit__(None, None, None)


def chat_scope(client: Any, body: bytes, department: str = "sales") -> dict[str, Any]:
    """The ASGI scope uvicorn gives a POST /api/chat, for calling the app by hand."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},  # as uvicorn says
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/chat",
        "raw_path": b"/api/chat",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-ometer-department", department.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": client.app_state.copy(),
    }


def _call(client: TestClient, body: dict[str, Any], leave_after: int | None) -> list[Any]:
    """One call; the caller hangs up once ``leave_after`` body messages were sent to it
    (None: it reads to the end). What the app sent, as uvicorn would take it: nothing
    after the hang-up."""
    raw = json.dumps(body).encode()
    sent: list[Any] = []
    gone = anyio.Event() if False else None  # made inside the loop below
    received = 0

    async def call() -> None:
        nonlocal gone
        gone = anyio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal received
            received += 1
            if received == 1:
                return {"type": "http.request", "body": raw, "more_body": False}
            assert gone is not None
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            assert gone is not None
            if gone.is_set():
                return  # uvicorn drops what is sent after the hang-up
            sent.append(message)
            bodies = sum(m["type"] == "http.response.body" for m in sent)
            if leave_after is not None and bodies >= leave_after:
                gone.set()

        if leave_after == 0:
            gone.set()
        await client.app(chat_scope(client, raw), receive, send)  # type: ignore[arg-type]

    client.portal.call(call)  # type: ignore[union-attr]
    return sent


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.sampled_from(FAULTS),
    second=st.sampled_from(FAULTS),
    stream=st.booleans(),
    leave_after=st.none() | st.integers(0, 3),
)
def test_a_fleet_call_that_ends_in_any_way_gives_everything_back_and_is_one_span(
    two_servers: tuple[TestClient, OllamaEmulator, OllamaEmulator],
    sqlite_url: str,
    first: Fault | None,
    second: Fault | None,
    stream: bool,
    leave_after: int | None,
) -> None:
    client, one, two = two_servers
    gateway = client.app_state["gateway"]
    fleet = gateway.fleet
    ledger = committed(open_ledger(sqlite_url))
    before = len(ledger.latest(SpanFilter(), 10_000))
    asked = len(one.requests_to("/api/chat")) + len(two.requests_to("/api/chat"))
    for emu, fault in ((one, first), (two, second)):
        emu.clear_faults()
        if fault is not None:
            emu.inject(fault, times=3, after_tokens=1)
    body = {"model": LLAMA, "messages": HI, "stream": stream, "options": {"num_predict": 2}}
    _call(client, body, leave_after)
    spans = committed(open_ledger(sqlite_url)).latest(SpanFilter(), 10_000)
    assert len(spans) == before + 1
    span = max(spans, key=lambda s: s.started_at)
    now_asked = len(one.requests_to("/api/chat")) + len(two.requests_to("/api/chat"))
    if now_asked > asked:  # it reached a server: the span names one of them
        assert span.upstream_host in (one.url, two.url)
    assert [s.in_use for s in fleet.servers] == [0, 0]
    assert fleet.queue.waiting == 0 and fleet.queue.in_service == 0
    assert gateway.rates.running() == {}
    for server in fleet.servers:
        breaker = server.breaker
        assert breaker._host.trial is None
        assert all(c.trial is None for c in breaker._models.values())
