"""An ometer client calling through an ometer gateway on the same ledger: one call, one hold.

The client holds its call's bound before it sends (it cannot know yet that a gateway on its
ledger answers); the gateway, finding that hold in its ledger, made by the client span the
call names, takes it over as its own reservation instead of holding the bound a second time.
So a hard budget with room for the call admits it, and spend never passes the limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget, budget_status
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import utc_now
from ollama_meter.pricing import to_micros
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]
CAP = {"num_predict": 8}


def _said_bound(message: str) -> int:
    return to_micros(
        Decimal(
            message.split("may cost up to ")[1].split(";", maxsplit=1)[0].split(",", maxsplit=1)[0]
        )
    )


def bounds(gw: Gateway, db_url: str) -> tuple[int, int]:
    """What the client and the gateway each hold for the test's chat, as refusals say it."""
    gw.ledger.save_budget(Budget("acme", "probe", "day", 1, "USD"))
    with MeteredClient(gw.url, tenant="acme", department="probe", db_url=db_url) as client:
        with pytest.raises(BudgetExceeded) as refused:
            client.chat("llama3.1:8b", HI, options=CAP)
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False, "options": CAP}
    answer = gw.client.post(
        "/api/chat", json=body, headers={"X-Ometer-Tenant": "acme", "X-Ometer-Department": "probe"}
    )
    assert answer.status_code == 429, answer.text
    return _said_bound(str(refused.value)), _said_bound(answer.json()["error"])


def test_room_for_one_call_admits_it_through_a_gateway_on_the_clients_ledger(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    client_bound, gateway_bound = bounds(gw, sqlite_url)
    limit = max(client_bound, gateway_bound)
    gw.ledger.save_budget(Budget("acme", "sales", "day", limit, "USD"))
    assert gw.meter.budgets is not None
    gw.meter.budgets.reload_soon()
    with MeteredClient(gw.url, tenant="acme", department="sales", db_url=sqlite_url) as client:
        last = client.chat("llama3.1:8b", HI, options=CAP)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(department="sales"), 10)
    assert (span.source, span.status, last.meter.id) == ("gateway", "ok", span.id)
    assert 0 < span.cost_total <= limit


CALLERS = 3


def test_room_for_n_calls_admits_n_at_once_through_the_gateway_and_no_more(
    emulator: OllamaEmulator, db_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """Three calls at once from threads of one client, room for exactly three bounds: each
    is held once (the client's row, taken over by the gateway), so all three are admitted
    (two at most were, each held twice: the others refused with 429), a fourth is refused
    while they run, and the spend stays within the limit; nothing is held once they end."""
    gw = serve_on(emulator.url, db_url)
    gw.ledger.add_price_rule(token_prices())
    client_bound, gateway_bound = bounds(gw, db_url)
    limit = CALLERS * max(client_bound, gateway_bound)
    gw.ledger.save_budget(Budget("acme", "sales", "day", limit, "USD"))
    assert gw.meter.budgets is not None
    gw.meter.budgets.reload_soon()
    emulator.token_latency = 1.0  # each call runs some 8 s: they run together on a busy host too
    failed: list[BaseException] = []
    who = {"tenant": "acme", "department": "sales", "db_url": db_url, "retries": 0}
    with MeteredClient(gw.url, **who) as client:

        def call() -> None:
            try:
                client.chat("llama3.1:8b", HI, options=CAP)
            except BaseException as exc:
                failed.append(exc)

        try:
            threads = [threading.Thread(target=call) for _ in range(CALLERS)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while emulator.in_flight < CALLERS and not failed:
                assert time.monotonic() < deadline, "the calls did not run together"
                time.sleep(0.01)
            with pytest.raises(BudgetExceeded):  # the client's own gate: the room is held
                client.chat("llama3.1:8b", HI, options=CAP)
            emulator.hurry()  # refused while they ran: they need not run their 8 s out
            for thread in threads:
                thread.join()
        finally:
            emulator.token_latency = 0.0
    assert failed == []
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(department="sales"), 10)
    assert sorted((s.source, s.status) for s in spans) == [("gateway", "ok")] * CALLERS + [
        ("sdk", "rejected")
    ]
    assert sum(s.cost_total for s in spans) <= limit
    gw.meter.budgets.close()
    (status,) = [
        s
        for s in budget_status(gw.ledger, tz=ZoneInfo("UTC"), now=utc_now())
        if s.budget.department == "sales"
    ]
    assert status.held == 0 and status.spent == sum(s.cost_total for s in spans)


@pytest.mark.slow
def test_ometer_chat_processes_through_the_gateway_are_each_held_once(
    emulator: OllamaEmulator, db_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """Four ``ometer chat`` runs at once through a gateway on their ledger, room for two and a
    half bounds: two are admitted (one was: each held twice, by its run and by the gateway;
    the others refused, by their own gates or the gateway's 429), the others refused by their
    own gates (exit code 3), and the spend stays within the limit."""
    gw = serve_on(emulator.url, db_url)
    gw.ledger.add_price_rule(token_prices())
    bound = max(bounds(gw, db_url))
    limit = 2 * bound + bound // 2
    gw.ledger.save_budget(Budget("acme", "sales", "day", limit, "USD"))
    env = {
        **os.environ,
        "OLLAMA_HOST": gw.url,
        "OMETER_DB_URL": db_url,
        "OMETER_RETRIES": "0",
        "OMETER_LEDGER_WAIT": "60",
    }
    chat = [sys.executable, "-m", "ollama_meter", "chat", "--tenant", "acme", "--dept", "sales"]
    chat += ["-m", "llama3.1:8b", "--no-stream", "-o", "num_predict=8", "hi"]

    def run(_: int) -> int:
        done = subprocess.run(chat, env=env, capture_output=True, timeout=180, check=False)
        return done.returncode

    emulator.token_latency = 1.0  # each call runs some 8 s: the four overlap
    try:
        with ThreadPoolExecutor(4) as pool:
            runs = [pool.submit(run, n) for n in range(4)]
            # Once each run is answered or refused, the calls admitted need not run their 8 s
            # out: hurried then, they end at once (on a busy host, at the latest after them).
            deadline = time.monotonic() + 30
            while sum(r.done() for r in runs) + emulator.in_flight < len(runs):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            emulator.hurry()
            codes = sorted(r.result() for r in runs)
    finally:
        emulator.token_latency = 0.0
    # Two at once; a run that started once one had ended may be admitted too (a slow start).
    assert codes.count(0) >= 2 and set(codes) <= {0, 3}, codes
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(department="sales"), 10)
    assert sorted((s.source, s.status) for s in spans) == [("cli", "rejected")] * codes.count(3) + [
        ("gateway", "ok")
    ] * codes.count(0)
    assert sum(s.cost_total for s in spans) <= limit


def _chain(
    emulator: OllamaEmulator, url: str, serve_on: Callable[..., Gateway]
) -> tuple[Gateway, Gateway, int]:
    """``ometer run``'s gateway (outer) in front of ``ometer serve`` (inner) on the ledger
    ``url``, with prices: both, and the larger bound of the test's chat."""
    inner = serve_on(emulator.url, url)
    outer = serve_on(inner.url, url)
    inner.ledger.add_price_rule(token_prices())
    return inner, outer, max(bounds(inner, url))


def _room_for(limit: int, *gateways: Gateway) -> None:
    """A daily hard budget of ``limit`` for acme/sales, read by each of ``gateways`` now."""
    gateways[0].ledger.save_budget(Budget("acme", "sales", "day", limit, "USD"))
    for gw in gateways:
        assert gw.meter.budgets is not None
        gw.meter.budgets.reload_soon()


def _spent_once(inner: Gateway, outer: Gateway, span_id: str) -> None:
    """The call is the inner gateway's one span ``span_id``, and once the gateways give back
    their leases the budget holds nothing and has spent its cost."""
    inner.settle()
    outer.settle()
    (span,) = inner.ledger.latest(SpanFilter(department="sales"), 10)
    assert (span.source, span.status, span.id) == ("gateway", "ok", span_id)
    held_none(span.cost_total, inner, outer)


def held_none(spent: int, inner: Gateway, *others: Gateway) -> None:
    """Once the gateways give back their leases, the sales budget holds nothing and has
    spent ``spent``."""
    for gw in (*others, inner):
        assert gw.meter.budgets is not None
        gw.meter.budgets.close()
    (status,) = [
        s
        for s in budget_status(inner.ledger, tz=ZoneInfo("UTC"), now=utc_now())
        if s.budget.department == "sales"
    ]
    assert (status.held, status.spent) == (0, spent)


@pytest.mark.parametrize("upstream_first", [False, True])
def test_room_for_one_call_admits_it_through_two_gateways_on_one_ledger(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    upstream_first: bool,
) -> None:
    """``ometer run`` in front of ``ometer serve`` on one ledger, a hard budget with room for
    exactly the call's bound: the outer gateway held it in its shared lease, which the inner
    one could not take over, so the inner one had no room left and refused it (429). The
    outer gateway now holds a call it may relay to a gateway on its ledger in rows of the
    call's own, which the inner one takes over: held once, admitted, nothing left held.
    ``upstream_first``: the outer gateway has relayed a call before (it knows what is behind it)."""
    inner, outer, bound = _chain(emulator, sqlite_url, serve_on)
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False, "options": CAP}
    if upstream_first:
        assert outer.client.post("/api/chat", json=body).status_code == 200
    _room_for(bound, inner, outer)
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
    answer = outer.client.post("/api/chat", json=body, headers=who)
    assert answer.status_code == 200, answer.text
    _spent_once(inner, outer, answer.headers["x-ometer-span-id"])


def test_room_for_one_call_admits_it_from_a_client_through_two_gateways_on_one_ledger(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """A client, then ``ometer run``'s gateway, then ``ometer serve``, all on one ledger: the
    client's hold is taken over by the outer gateway, whose own is taken over by the inner one
    (each names the client's span onward): the call is held once, and admitted."""
    inner, outer, bound = _chain(emulator, sqlite_url, serve_on)
    _room_for(bound, inner, outer)
    with MeteredClient(outer.url, tenant="acme", department="sales", db_url=sqlite_url) as client:
        last = client.chat("llama3.1:8b", HI, options=CAP)
    _spent_once(inner, outer, last.meter.id)
