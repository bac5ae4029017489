"""Four callers at once through two gateways chained on one ledger, under a hard budget.

``ometer run``'s gateway (outer) in front of ``ometer serve`` (inner), both on the company's
ledger, with room in a daily hard budget for exactly two calls' bounds: no more than two run
at once, each call is one span (the inner gateway's, or a refusal's), the spend stays within
the limit and, once the gateways give back their leases, nothing is held.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from ollama_meter import MeteredClient
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway
from tests.gateway.test_held_once import CAP, HI, _chain, _room_for, held_none

CALLERS, ROOM = 4, 2


@pytest.mark.parametrize(
    ("caller", "stream"), [("client", False), ("plain", False), ("client", True)]
)
def test_four_callers_through_two_gateways_share_room_for_two(
    emulator: OllamaEmulator,
    db_url: str,
    serve_on: Callable[..., Gateway],
    caller: str,
    stream: bool,
) -> None:
    """``client``: ometer clients on the ledger (each call held by its client, then the outer
    gateway, then the inner one, taken over each time); ``plain``: callers with no ledger.
    ``stream``: the answers streamed."""
    inner, outer, bound = _chain(emulator, db_url, serve_on)
    limit = ROOM * bound
    _room_for(limit, inner, outer)
    emulator.token_latency = 0.2  # each call some 1.6 s: the four overlap
    outcomes: list[str] = []
    go = threading.Barrier(CALLERS)
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False, "options": CAP}
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}

    def call() -> None:
        go.wait()
        if caller == "plain":
            answer = httpx.post(f"{outer.url}/api/chat", json=body, headers=who, timeout=60)
            outcomes.append("ok" if answer.status_code == 200 else str(answer.status_code))
            return
        with MeteredClient(
            outer.url, tenant="acme", department="sales", db_url=db_url, retries=0
        ) as client:
            try:
                reply = client.chat("llama3.1:8b", HI, options=CAP, stream=stream)
                if stream:
                    list(reply)
            except BudgetExceeded:
                outcomes.append("429")
            else:
                outcomes.append("ok")

    try:
        threads = [threading.Thread(target=call) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        emulator.token_latency = 0.0
    assert sorted(outcomes) == ["429"] * (CALLERS - ROOM) + ["ok"] * ROOM, outcomes
    assert emulator.most_in_flight == ROOM
    time.sleep(0.1)
    inner.settle()
    outer.settle()
    spans = inner.ledger.latest(SpanFilter(department="sales"), 10)
    assert len(spans) == CALLERS, [(s.source, s.status) for s in spans]
    admitted = [s for s in spans if s.status == "ok"]
    assert [s.source for s in admitted] == ["gateway"] * ROOM
    assert all(s.upstream_host == emulator.url for s in admitted)
    assert sum(s.cost_total for s in spans) <= limit
    held_none(sum(s.cost_total for s in spans), inner, outer)
