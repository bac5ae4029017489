"""Many calls at once under concurrency limits, ending every way: no place is ever kept.

In process (the ASGI app, lifespan included, as test_fleet_endings drives it), in front of
two emulated servers that fail in several ways; each caller hangs up where the test says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.config import load_settings
from ollama_meter.gateway import GatewayOptions, create_app
from ollama_meter.ledger import open_ledger
from ollama_meter.records import Limit
from ollama_meter.testing import Fault, OllamaEmulator
from tests.gateway.conftest import TestClient
from tests.gateway.test_fleet_endings import chat_scope

LLAMA = "llama3.1:8b"
HI = [{"role": "user", "content": "hi"}]
FAULTS = [Fault.HTTP_503, Fault.DROP, Fault.MIDSTREAM_ERROR, Fault.HTTP_500]


@pytest.fixture
def gateway(
    emulators: Callable[..., OllamaEmulator], sqlite_url: str
) -> Iterator[tuple[TestClient, OllamaEmulator, OllamaEmulator]]:
    one, two = emulators(LLAMA, token_latency=0.002), emulators(LLAMA, token_latency=0.002)
    ledger = open_ledger(sqlite_url)
    ledger.set_limit(Limit("default", "sales", concurrency=2))
    ledger.set_limit(Limit("default", None, concurrency=3))
    settings_ = load_settings(
        db_url=sqlite_url,
        ollama_host=one.url,
        upstreams=f"{one.url}#slots=2,{two.url}#slots=2",
        discovery_interval=3600,
        retries=1,
        retry_backoff=0.001,
        breaker_failures=1000,
    )
    client = TestClient(create_app(settings_, GatewayOptions()))
    client.__enter__()
    try:
        yield client, one, two
    finally:
        client.__exit__(None, None, None)


async def _call(client: TestClient, department: str, stream: bool, leave: int | None) -> None:
    """One call; its caller hangs up after ``leave`` body messages (0: at once, while its
    call waits its turn; None: it reads to the end)."""
    body = {"model": LLAMA, "messages": HI, "stream": stream, "options": {"num_predict": 8}}
    raw = json.dumps(body).encode()
    gone = anyio.Event()
    if leave == 0:
        gone.set()
    sent = 0
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        if gone.is_set():
            return
        sent += message["type"] == "http.response.body"
        if leave is not None and sent >= leave:
            gone.set()

    await client.app(chat_scope(client, raw, department), receive, send)  # type: ignore[arg-type]


CALLS = st.lists(
    st.tuples(
        st.sampled_from(["sales", "sales", "support"]),
        st.booleans(),
        st.none() | st.integers(0, 2),
    ),
    min_size=4,
    max_size=16,
)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(calls=CALLS, faults=st.lists(st.sampled_from(FAULTS), max_size=4))
def test_after_any_storm_of_calls_a_department_has_its_whole_concurrency_again(
    gateway: tuple[TestClient, OllamaEmulator, OllamaEmulator],
    calls: list[tuple[str, bool, int | None]],
    faults: list[Fault],
) -> None:
    client, one, _ = gateway
    state = client.app_state["gateway"]
    one.clear_faults()
    for fault in faults:  # the first server fails some calls: they move to the second
        one.inject(fault, after_tokens=1)

    async def storm() -> None:
        async with anyio.create_task_group() as group:
            for department, stream, leave in calls:
                group.start_soon(_call, client, department, stream, leave)

    client.portal.call(storm)  # type: ignore[union-attr]
    fleet, rates = state.fleet, state.rates
    assert [s.in_use for s in fleet.servers] == [0, 0]
    assert (fleet.queue.waiting, fleet.queue.in_service, rates.running()) == (0, 0, {})
    # Every place free: the department's two, and the tenant's three, all to be taken.
    places = rates.admit("default", "sales").caps
    assert [(cap.name, cap.limit, cap.in_use) for cap in places] == [
        ("default (all)", 3, 0),
        ("default/sales", 2, 0),
    ]
