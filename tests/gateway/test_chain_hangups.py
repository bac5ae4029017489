"""Two gateways chained on one ledger, the outer one fresh: a call cut short is one span.

``ometer run``'s gateway (outer) in front of ``ometer serve`` (inner), both writing to the
company's ledger, with no hard budget (so the outer one never asked what is behind it).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget
from ollama_meter.gateway import _onward
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.records import SpanRecord
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway
from tests.gateway.test_held_once import held_none
from tests.gateway.test_processes import start_gateway
from tests.integrity.test_journal_lines import _no_prices

BODY = b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": false}'


def recorded(gw: Gateway, calls: int = 1) -> None:
    """Wait until ``gw``'s ledger holds ``calls`` spans (a caller gone, the gateway notices
    within milliseconds)."""
    deadline = time.monotonic() + 10
    while len(gw.ledger.latest(SpanFilter(), calls)) < calls:
        assert time.monotonic() < deadline, "the gateway never noticed its caller leave"
        time.sleep(0.02)


def _hang_up_once_sent(
    url: str, headers: dict[str, str], after: float = 0.3, ollama: OllamaEmulator | None = None
) -> None:
    """Send the whole request on a raw socket, then close it before any answer: ``after``
    seconds once sent, or once ``ollama`` works on it (on a busy machine the call can take
    longer than any fixed wait to pass two gateways)."""
    parts = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /api/chat HTTP/1.1\r\nhost: {parts.netloc}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n{head}\r\n"
    ).encode() + BODY
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + 30
        while ollama is not None and ollama.in_flight < 1:
            assert time.monotonic() < deadline, "the call never reached Ollama"
            time.sleep(0.01)
        time.sleep(after)  # both gateways have it, Ollama is thinking


def _hung_up(
    emulator: OllamaEmulator, outer: Gateway, inner: Gateway, after: float, calls: int = 1
) -> list[SpanRecord]:
    """A sales caller of ``outer`` hangs up ``after`` seconds once Ollama has a call it takes 3 s
    over; the spans once both gateways are done (``calls`` at least: the ledger's latest ten)."""
    emulator.latency = 3.0
    try:
        _hang_up_once_sent(outer.url, {"X-Ometer-Department": "sales"}, after, emulator)
        recorded(inner, calls)
    finally:
        emulator.latency = 0.0
    deadline = time.monotonic() + 30
    while _onward._ASKING:  # the outer gateway still asks what is behind it
        assert time.monotonic() < deadline, "the outer gateway's ask never ended"
        time.sleep(0.02)
    time.sleep(1.5)  # past any wait for another's span
    inner.settle()
    outer.settle()
    return inner.ledger.latest(SpanFilter(), 10)


@pytest.mark.parametrize("ending", ["caller gone", "outer timeout"])
def test_a_call_a_fresh_outer_gateway_never_answered_is_one_span(
    emulator: OllamaEmulator, db_url: str, serve_on: Callable[..., Gateway], ending: str
) -> None:
    """Its caller hung up once it had sent the whole request, or the outer gateway's own time
    for Ollama's answer ran out: the outer gateway, not knowing what was behind it, wrote its
    own abort (or timeout) beside the inner one's abort. It asks first: one span."""
    inner = serve_on(emulator.url, db_url)
    timeout = {"upstream_timeout": 1.0} if ending == "outer timeout" else {}
    outer = serve_on(inner.url, db_url, config=timeout)
    spans = _hung_up(emulator, outer, inner, 1.5 if timeout else 0.05)
    assert [(s.source, s.department, s.status) for s in spans] == [
        ("gateway", "sales", "client_abort")
    ]
    assert len(emulator.requests_to("/api/chat")) == 1  # the outer one's retries not used


def test_an_outer_gateway_started_before_the_inner_one_asks_again_once_it_answers(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ometer run`` started while the ``ometer serve`` behind it was down: its first call
    under a hard budget asked what is behind it and got no answer, and it never asked again.
    A later call whose caller hung up before any answer then got the outer gateway's abort
    beside the inner one's: two spans of one call. It asks again (here at once; by default a
    few seconds after the failed ask): one span."""
    monkeypatch.setattr(_onward, "ASK_AGAIN", 0.0)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    outer = serve_on(f"http://127.0.0.1:{port}", sqlite_url)
    outer.ledger.add_price_rule(token_prices())
    outer.ledger.save_budget(Budget("default", "sales", "day", 10**9, "USD"))
    down = outer.client.post("/api/chat", content=BODY, headers={"X-Ometer-Department": "sales"})
    assert down.status_code == 502
    inner = serve_on(emulator.url, sqlite_url, port=port)
    spans = _hung_up(emulator, outer, inner, 0.05, calls=2)
    assert [(s.department, s.status, s.http_status) for s in spans] == [
        ("sales", "client_abort", None),
        ("sales", "error", 502),
    ]


@pytest.mark.parametrize(
    ("behind_a_client", "budgeted"), [(False, False), (True, False), (True, True)]
)
def test_a_fresh_outer_gateway_killed_mid_call_leaves_one_span(
    emulator: OllamaEmulator,
    db_url: str,
    serve_on: Callable[..., Gateway],
    behind_a_client: bool,
    budgeted: bool,
) -> None:
    """``kill -9`` of the outer gateway (a process of its own) while Ollama works on its first
    call; then the next process on the ledger recovers what it left open. ``budgeted``: under
    a hard budget, the call held by the client, the outer gateway and the inner one in turn,
    nothing is left held."""
    inner = serve_on(emulator.url, db_url)
    if budgeted:
        inner.ledger.add_price_rule(token_prices())
        inner.ledger.save_budget(Budget("default", "sales", "day", 10**9, "USD"))
    env = {**os.environ, "OMETER_DB_URL": db_url, "OMETER_DEPARTMENT": "sales"}
    proc, url = start_gateway(env, inner.url)
    emulator.latency = 3.0
    failed: list[BaseException] = []

    def call() -> None:
        try:
            with MeteredClient(url, department="sales", db_url=db_url, retries=0) as client:
                client.chat("llama3.1:8b", [{"role": "user", "content": "hi"}])
        except BaseException as exc:
            failed.append(exc)

    try:
        caller = threading.Thread(target=call)
        if behind_a_client:
            caller.start()
        else:
            # It hangs up a second after Ollama has the call (the gateway killed by then),
            # not 0.3 s after sending: a fresh process on a busy machine (load 10) took
            # longer than that to pass it on, so the call never reached Ollama.
            hang_up = threading.Thread(
                target=_hang_up_once_sent, args=(url, {}, 1.0, emulator), daemon=True
            )
            hang_up.start()
        deadline = time.monotonic() + 30
        while emulator.in_flight < 1:
            assert time.monotonic() < deadline, "the call never reached Ollama"
            time.sleep(0.01)
        proc.kill()
        proc.wait(timeout=10)
        if behind_a_client:
            caller.join(timeout=30)
            assert len(failed) == 1
        recorded(inner)
    finally:
        emulator.latency = 0.0
        proc.kill()  # killed already, unless the test failed before: no gateway left behind
        proc.wait(timeout=10)
    inner.settle()
    recover_interrupted(Ledger(db_url), _no_prices)
    spans = inner.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.department, s.status) for s in spans] == [
        ("gateway", "sales", "client_abort")
    ]
    if budgeted:
        assert spans[0].cost_total > 0
        held_none(spans[0].cost_total, inner)
