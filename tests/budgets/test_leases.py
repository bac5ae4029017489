"""Budgets at gateway speed: calls admitted against a leased slice in memory, never past the limit."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from sqlalchemy import func, select

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.ledger.models import ReservationRow
from ollama_meter.meter._request import facts_of
from ollama_meter.testing import OllamaEmulator, expected_counts
from tests.budgets.test_gate import BOUND, HELLO
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

OUT = expected_counts("llama3.1:8b", HELLO)[1]
BODY = {"model": "llama3.1:8b", "messages": HELLO, "stream": False, "options": {"num_predict": OUT}}


def ask(gateway: Gateway, dept: str = "sales") -> int:
    return httpx.post(
        f"{gateway.url}/api/chat",
        json=BODY,
        headers={"X-Ometer-Tenant": "acme", "X-Ometer-Department": dept},
        timeout=30,
    ).status_code


def cap(gateway: Gateway, limit: int) -> Budget:
    gateway.ledger.add_price_rule(token_prices("llama3.1:*"))
    return gateway.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=limit, currency="USD")
    )


def held(gateway: Gateway) -> int:
    with gateway.ledger.read() as conn:
        return int(conn.execute(select(func.count()).select_from(ReservationRow)).scalar_one())


def test_the_bound_in_the_tests_is_what_the_meter_reserves() -> None:
    facts = facts_of("chat", BODY)
    limits = facts.bound(4096)
    assert limits.output_tokens == OUT
    assert (limits.input_tokens * 1000 + limits.output_tokens * 2000) == BOUND


def test_a_gateway_admits_most_calls_without_the_ledger(
    serve: Any, emulator: OllamaEmulator
) -> None:
    gateway = serve(emulator.url)
    cap(gateway, BOUND * 1000)
    statuses = [ask(gateway) for _ in range(40)]
    assert statuses == [200] * 40
    meter = gateway_meter(gateway)
    assert meter.budgets.renewals <= 2  # one lease covers a quarter of the room
    assert held(gateway) == 1  # one lease row, not one reservation per call
    gateway.server.should_exit = True


def test_near_the_limit_every_call_is_decided_exactly(serve: Any, emulator: OllamaEmulator) -> None:
    gateway = serve(emulator.url)
    cost = expected_counts("llama3.1:8b", HELLO)[0] * 1000 + OUT * 2000
    # Room for the bound of a call after 6 calls, not after 7: exactly 7 are admitted.
    cap(gateway, cost * 6 + BOUND)
    statuses = [ask(gateway) for _ in range(10)]
    assert statuses == [200] * 7 + [429] * 3
    spans = gateway.ledger.latest(SpanFilter(status="ok"), 100)
    assert sum(s.cost_total for s in spans) == cost * 7


def test_two_gateways_on_one_ledger_never_overshoot(serve: Any, emulator: OllamaEmulator) -> None:
    one, two = serve(emulator.url), serve(emulator.url)
    limit = BOUND * 12
    cap(one, limit)
    emulator.latency = 0.05
    outcomes: list[int] = []
    start = threading.Barrier(48)

    def caller(index: int) -> None:
        start.wait()
        for _ in range(2):
            outcomes.append(ask(one if index % 2 else two))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emulator.latency = 0.0
    assert set(outcomes) <= {200, 429}
    spent = sum(s.cost_total for s in one.ledger.latest(SpanFilter(status="ok"), 1000))
    assert 0 < spent <= limit
    # Twelve bounds fit at once; each gateway's lease may strand less than one call's bound
    # while its calls are in flight.
    assert outcomes.count(200) >= 10


def test_leases_are_given_back_when_the_gateway_stops(
    serve_on: Any, emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gateway = serve_on(emulator.url, sqlite_url)
    cap(gateway, BOUND * 1000)
    assert ask(gateway) == 200 and held(gateway) == 1
    gateway.server.should_exit = True
    for _ in range(200):
        if not gateway.server.started or held(gateway) == 0:
            break
        threading.Event().wait(0.05)
    threading.Event().wait(0.5)
    assert held(gateway) == 0


def gateway_meter(gateway: Gateway) -> Any:
    """The meter the running gateway uses."""
    return gateway.meter
